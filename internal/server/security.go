package server

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// hostAllowList decides which Host headers the server answers.
//
// Why: the server has no cookies and trusts same-origin requests (the API's
// Origin check, the relay's websocket Origin check). A page on an
// attacker's name whose DNS later points at 127.0.0.1 (DNS rebinding) is
// "same origin" with itself, so without this check it could create
// sessions and open relay websockets on a laptop's server, and with
// --host-alias/--allow-egress reach the laptop's own PostgreSQL through a
// VM. Rebinding needs a name the attacker controls, so the default list is
// the names that cannot be rebound plus the ones the operator gave:
//
//   - any IP address literal: a page can only be same-origin with an
//     address by being served from it;
//   - localhost and *.localhost: RFC 6761 keeps them on loopback, and
//     browsers resolve them without DNS;
//   - the host of --public-url and of --listen, and --allowed-hosts.
type hostAllowList struct {
	any      bool
	names    map[string]bool
	suffixes []string // ".example.com" for "*.example.com"
}

// hostPattern is a host name, an address, "*.domain" or "*"; no scheme,
// port or path.
var hostPattern = regexp.MustCompile(`^(\*|(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|[0-9a-f:.]+)$`)

// CheckAllowedHosts reports the first entry of --allowed-hosts that is not
// a host name, an address, "*.domain" or "*".
func CheckAllowedHosts(patterns []string) error {
	for _, p := range patterns {
		if !hostPattern.MatchString(normHost(p)) {
			return fmt.Errorf("bad allowed host %q: want a host name (pg.example.com), an address, *.domain or *; no scheme or port", p)
		}
	}
	return nil
}

func newHostAllowList(extra []string, public *url.URL) (*hostAllowList, error) {
	if err := CheckAllowedHosts(extra); err != nil {
		return nil, err
	}
	l := &hostAllowList{names: map[string]bool{"localhost": true}, suffixes: []string{".localhost"}}
	if public != nil {
		l.names[normHost(public.Hostname())] = true
	}
	for _, p := range extra {
		switch p = normHost(p); {
		case p == "*":
			l.any = true
		case strings.HasPrefix(p, "*."):
			l.suffixes = append(l.suffixes, p[1:])
		default:
			l.names[p] = true
		}
	}
	return l, nil
}

// allows reports whether hostport (a request's Host) is served.
func (l *hostAllowList) allows(hostport string) bool {
	h := hostOf(hostport)
	if l.any || h == "" || l.names[h] {
		// An empty Host is HTTP/1.0 without one: no browser, no
		// rebinding.
		return true
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return slices.ContainsFunc(l.suffixes, func(s string) bool { return strings.HasSuffix(h, s) })
}

// hostOf is the host name of a Host header, lower case, without port,
// brackets or trailing dot.
func hostOf(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	return normHost(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
}

func normHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
}

// hostChecked answers 421 Misdirected Request for a Host the server does
// not serve, before h sees the request.
func (s *Server) hostChecked(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.hosts.allows(r.Host) {
			h.ServeHTTP(w, r)
			return
		}
		s.refused.WithLabelValues("host").Inc()
		s.log.Info("request for a host not served here refused", "host", r.Host, "origin", r.Header.Get("Origin"), "route", route)
		msg := fmt.Sprintf("host %q is not served here; if it is this server's name, start pgwasm serve with --allowed-hosts %s (or --public-url)",
			r.Host, hostOf(r.Host))
		if route == "api" {
			writeError(w, http.StatusMisdirectedRequest, msg)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusMisdirectedRequest)
		fmt.Fprintln(w, msg)
	})
}

// Security headers. Every response gets nosniff, no referrer (relay URLs
// carry the session token in their query), no framing, and a CSP that
// allows nothing: JSON, image files and metrics are data, never documents
// that should run or embed anything. The page gets pageCSP instead.
const lockedCSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

func setSecurityHeaders(h http.Header) {
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", lockedCSP)
}

// scriptHasher is an App that knows its inline scripts (web.Handler): their
// hashes go into the page's CSP, so no 'unsafe-inline' is needed.
type scriptHasher interface {
	ScriptHashes() []string
}

// pagePolicy builds the page's Content-Security-Policy. Each directive, and
// why (docs/serve.md, "Browser security"):
//
//   - default-src 'self': everything else (images, fonts, manifests) only
//     from this server;
//   - script-src 'self' 'wasm-unsafe-eval' + inline hashes: the bundles,
//     v86's WebAssembly (compiled by WebAssembly.instantiate, in the page
//     and in its zstd worker), and the example page's inline module by
//     hash; no eval, no other inline script;
//   - worker-src 'self' blob:: v86 starts workers from blob: URLs (zstd
//     decompression of the state, its idle timer);
//   - style-src 'self' 'unsafe-inline': xterm.js writes <style> elements
//     and style attributes at run time (styles cannot run code);
//   - connect-src 'self' + the relay's ws(s):// origin: fetch of the image
//     and the API, and the relay websocket (older browsers do not count
//     ws: to the own host as 'self');
//   - object-src 'none', base-uri 'none', form-action 'none': no plugins,
//     no <base> hijack of relative URLs, no forms to post anywhere;
//   - frame-ancestors 'none': the page holds the session password in its
//     DOM; no other site may frame it (X-Frame-Options DENY for old
//     browsers).
type pagePolicy struct {
	prefix string // everything before connect-src
}

func newPagePolicy(app http.Handler) pagePolicy {
	script := "script-src 'self' 'wasm-unsafe-eval'"
	if sh, ok := app.(scriptHasher); ok {
		for _, h := range sh.ScriptHashes() {
			script += " " + h
		}
	}
	return pagePolicy{prefix: "default-src 'self'; " + script +
		"; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}
}

// safeHost matches host[:port] strings that may go into a header as they
// are (the Host check may be off with --allowed-hosts '*').
var safeHost = regexp.MustCompile(`^[A-Za-z0-9.\-_]+(:[0-9]+)?$|^\[[0-9A-Fa-f:.]+\](:[0-9]+)?$`)

// header is the policy for a page whose relay websocket goes to relay
// (ws://host[:port] or wss://...).
func (p pagePolicy) header(relay *url.URL) string {
	connect := "connect-src 'self'"
	if relay != nil && safeHost.MatchString(relay.Host) {
		connect += " " + relay.Scheme + "://" + relay.Host
	}
	return p.prefix + "; " + connect
}

// pageHeaders wraps the app: the page's CSP replaces the locked one.
func (s *Server) pageHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", s.page.header(s.relayOrigin(r)))
		h.ServeHTTP(w, r)
	})
}

// relayOrigin is the scheme and host relay URLs get for this request.
func (s *Server) relayOrigin(r *http.Request) *url.URL {
	base := s.base(r)
	u := &url.URL{Scheme: "ws", Host: base.Host}
	if base.Scheme == "https" {
		u.Scheme = "wss"
	}
	return u
}
