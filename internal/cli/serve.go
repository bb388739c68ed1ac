package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pgwasm/pgwasm/internal/policy"
	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/server"
	"github.com/pgwasm/pgwasm/internal/stack"
	"github.com/pgwasm/pgwasm/internal/tunnel"
	"github.com/pgwasm/pgwasm/internal/web"
)

// serveConfig is everything `pgwasm serve` takes; docs/serve.md lists it.
type serveConfig struct {
	listen            string
	image             string
	publicURL         string
	allowedOrigins    listFlag
	allowedHosts      listFlag
	trustForwardedFor bool
	shutdownTimeout   time.Duration
	drainDelay        time.Duration
	lazySessions      bool
	sessionSecret     string
	sessionSecretFile string
	readyFile         string

	tunnelPorts     string
	tunnelBind      string
	tunnelHost      string
	sniListen       string
	sniPublicPort   uint
	tunnelDomain    string
	tunnelCert      string
	tunnelKey       string
	tunnelHandshake time.Duration
	// tunnelLimits holds the connection limit flags (its other fields unused).
	tunnelLimits tunnel.Config

	relay        relay.Config
	hostAlias    string
	allowEgress  listFlag
	dnsUpstreams listFlag
}

// listFlag is a string list flag: repeat it or give a comma list (the
// comma form is what a PGWASM_* environment variable carries).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func (c *serveConfig) registerFlags(fs *flag.FlagSet) {
	c.relay = relay.DefaultConfig()
	td := tunnel.DefaultConfig()
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "HTTP listen address")
	fs.StringVar(&c.image, "image", "build/image", "VM image directory served under /image/")
	fs.StringVar(&c.publicURL, "public-url", "", "base URL users reach the server under (e.g. https://pg.example.com); empty: taken from each request")
	fs.Var(&c.allowedOrigins, "allowed-origins", "other page origins (scheme://host[:port]) that may use the API and relay; repeat or comma list; * allows any")
	fs.Var(&c.allowedHosts, "allowed-hosts", "host names the server answers to besides IP addresses, localhost, *.localhost and the hosts of --public-url and --listen (against DNS rebinding): names or *.domain; repeat or comma list; * allows any")
	fs.BoolVar(&c.trustForwardedFor, "trust-forwarded-for", false, "take the client address from X-Forwarded-For (only behind a proxy that sets it)")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "graceful shutdown (drain) limit: the process exits within this long of SIGTERM/SIGINT")
	fs.DurationVar(&c.drainDelay, "drain-delay", 0, "on shutdown, how long to stay unready (/readyz 503, no new sessions) while still serving, before closing websockets with 4503 and the SNI listener: time for a load balancer to take this server out; less than --shutdown-timeout")
	fs.BoolVar(&c.lazySessions, "lazy-sessions", false, "POST /api/sessions only signs the session's token; its network is built where its websocket arrives (a cluster behind a proxy routing by session id; needs --tunnel-ports off and a shared --session-secret)")
	fs.StringVar(&c.sessionSecret, "session-secret", "", "secret (at least 16 bytes) that signs session tokens, so sessions survive a restart and any server with the same secret accepts them; empty: random at start (a restart then ends every session)")
	fs.StringVar(&c.sessionSecretFile, "session-secret-file", "", "file holding --session-secret (surrounding white space ignored)")
	fs.StringVar(&c.readyFile, "ready-file", "", `once listening, write the bound addresses to this file as JSON, {"http":"HOST:PORT","sni":"HOST:PORT"} (sni only when on), for tests and scripts that listen on port 0; removed on exit`)

	fs.StringVar(&c.tunnelPorts, "tunnel-ports", "15432-15531", "port range for per-session tunnel ports (FIRST-LAST); off disables port mode")
	fs.StringVar(&c.tunnelBind, "tunnel-bind", td.PortBind.String(), "address per-session tunnel ports listen on")
	fs.StringVar(&c.tunnelHost, "tunnel-host", "", "host name or address users connect to for the tunnel; empty: the host of --public-url or of the request")
	fs.StringVar(&c.sniListen, "tunnel-sni-listen", "127.0.0.1:5433", "listen address of the TLS SNI tunnel; off disables SNI mode")
	fs.UintVar(&c.sniPublicPort, "tunnel-sni-port", 0, "port users connect to for SNI mode, if a proxy maps it; 0: the --tunnel-sni-listen port")
	fs.StringVar(&c.tunnelDomain, "tunnel-domain", td.Domain, "SNI domain: sessions are reached as <session-id>.<domain>")
	fs.StringVar(&c.tunnelCert, "tunnel-tls-cert", "", "PEM certificate the SNI tunnel uses only to tell clients of unknown sessions so; empty: self-signed at startup")
	fs.StringVar(&c.tunnelKey, "tunnel-tls-key", "", "PEM key for --tunnel-tls-cert")
	fs.DurationVar(&c.tunnelHandshake, "tunnel-handshake-timeout", td.HandshakeTimeout, "time a tunnel client has to send its TLS ClientHello")
	tl := &c.tunnelLimits
	fs.IntVar(&tl.MaxConnsPerSource, "tunnel-max-conns-per-source", td.MaxConnsPerSource, "concurrent tunnel connections from one source address (IPv6: /64), both modes; 0: no limit")
	fs.IntVar(&tl.MaxConnsPerSession, "tunnel-max-conns-per-session", td.MaxConnsPerSession, "concurrent tunnel connections to one session, both modes")
	fs.IntVar(&tl.MaxPreauthPerSession, "tunnel-max-preauth-per-session", td.MaxPreauthPerSession, "tunnel connections of one session not yet authenticated; more close the busiest source's oldest")
	fs.DurationVar(&tl.AuthTimeout, "tunnel-auth-timeout", td.AuthTimeout, "close a tunnel connection that has not authenticated this long after it arrived")
	fs.DurationVar(&tl.DialTimeout, "tunnel-dial-timeout", td.DialTimeout, "time the VM has to accept a tunnel connection (a loaded or just-restored VM can be slow)")
	fs.IntVar(&tl.MaxHandshakesPerSource, "tunnel-max-handshakes-per-source", td.MaxHandshakesPerSource, "SNI handshake slots one source address (IPv6: /64) may hold; 0: no limit")

	r := &c.relay
	fs.Var(&c.allowEgress, "allow-egress", "extra destinations VMs may reach (ADDR, ADDR:PORT, CIDR, CIDR:PORT), e.g. 127.0.0.1:5432; repeat or comma list; the default is public internet only")
	fs.StringVar(&c.hostAlias, "host-alias", "off", "address in the VM subnet (e.g. 10.0.2.3) that leads to this host's 127.0.0.1, for ports --allow-egress allows (127.0.0.1:PORT); off disables it")
	fs.Var(&c.dnsUpstreams, "dns", "DNS resolvers for the VMs (host:port); repeat or comma list; empty: /etc/resolv.conf")
	fs.IntVar(&r.MaxSessions, "max-sessions", r.MaxSessions, "sessions in all")
	fs.IntVar(&r.MaxSessionsPerClient, "max-sessions-per-client", r.MaxSessionsPerClient, "sessions per client IP address")
	fs.IntVar(&r.MaxTCPFlows, "max-tcp-flows", r.MaxTCPFlows, "concurrent outbound TCP connections per session")
	fs.IntVar(&r.MaxUDPFlows, "max-udp-flows", r.MaxUDPFlows, "concurrent UDP flows per session")
	fs.IntVar(&r.BytesPerSecond, "bandwidth", r.BytesPerSecond, "bytes per second per session and direction; 0: unlimited")
	fs.IntVar(&r.BurstBytes, "burst", r.BurstBytes, "bandwidth burst in bytes")
	fs.DurationVar(&r.IdleTimeout, "idle-timeout", r.IdleTimeout, "end a session with no traffic for this long")
	fs.DurationVar(&r.Lifetime, "session-lifetime", r.Lifetime, "end any session this long after it was created")
	fs.DurationVar(&r.Grace, "grace", r.Grace, "keep a session without a websocket this long (the page reconnects)")
}

// parsePortRange reads "FIRST-LAST" (or one port).
func parsePortRange(s string) (uint16, uint16, error) {
	if off(s) {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || first == 0 || last < first {
		return 0, 0, fmt.Errorf("bad port range %q: want FIRST-LAST, 1-65535", s)
	}
	return uint16(first), uint16(last), nil
}

// off reports a value that disables a listener. "off" exists because an
// empty PGWASM_* variable does not override a flag default.
func off(s string) bool { return s == "" || s == "off" }

// serveParts are the checked settings of every component.
type serveParts struct {
	relay  relay.Config
	tunnel tunnel.Config
	server server.Config
}

func (c *serveConfig) parts() (serveParts, error) {
	var p serveParts
	var err error
	if p.relay, err = c.relayConfig(); err != nil {
		return p, err
	}
	if p.server, err = c.serverConfig(); err != nil {
		return p, err
	}
	if err := c.allowOrigins(&p); err != nil {
		return p, err
	}
	// A session re-created on a websocket counts against the same
	// per-client limit as one made through the API.
	trust := c.trustForwardedFor
	p.relay.ClientAddr = func(r *http.Request) netip.Addr { return server.ClientAddr(r, trust) }
	if p.tunnel, err = c.tunnelConfig(); err != nil {
		return p, err
	}
	if c.lazySessions && (p.tunnel.PortFirst != 0 || len(p.relay.SessionSecret) == 0) {
		return p, errors.New("--lazy-sessions needs --tunnel-ports off (a port belongs to one server) and a --session-secret shared by the servers")
	}
	if c.drainDelay < 0 || c.shutdownTimeout <= 0 || c.drainDelay >= c.shutdownTimeout {
		return p, fmt.Errorf("--drain-delay %s must be at least 0 and less than --shutdown-timeout %s", c.drainDelay, c.shutdownTimeout)
	}
	if c.sniPublicPort > 65535 {
		return p, fmt.Errorf("bad --tunnel-sni-port %d", c.sniPublicPort)
	}
	return p, nil
}

func (c *serveConfig) relayConfig() (relay.Config, error) {
	r := c.relay
	pol, err := policy.Parse(c.allowEgress)
	if err != nil {
		return r, fmt.Errorf("cannot parse --allow-egress: %w", err)
	}
	r.Egress = pol
	if r.SessionSecret, err = c.secret(); err != nil {
		return r, err
	}
	r.DNSUpstreams = c.dnsUpstreams
	if !off(c.hostAlias) {
		if r.HostAlias, err = netip.ParseAddr(c.hostAlias); err != nil {
			return r, fmt.Errorf("cannot parse --host-alias: %w", err)
		}
	}
	return r, nil
}

func (c *serveConfig) secret() ([]byte, error) {
	var secret []byte
	switch {
	case c.sessionSecret != "" && c.sessionSecretFile != "":
		return nil, errors.New("give --session-secret or --session-secret-file, not both")
	case c.sessionSecretFile != "":
		b, err := os.ReadFile(c.sessionSecretFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read --session-secret-file: %w", err)
		}
		secret = bytes.TrimSpace(b)
		if len(secret) == 0 {
			return nil, fmt.Errorf("--session-secret-file %s is empty", c.sessionSecretFile)
		}
	case c.sessionSecret != "":
		secret = []byte(c.sessionSecret)
	}
	if n := len(secret); n > 0 && n < relay.MinSecretLen {
		return nil, fmt.Errorf("session secret of %d bytes: want at least %d", n, relay.MinSecretLen)
	}
	return secret, nil
}

func (c *serveConfig) serverConfig() (server.Config, error) {
	var s server.Config
	if c.publicURL != "" {
		u, err := url.Parse(c.publicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return s, fmt.Errorf("bad --public-url %q: want http(s)://host[:port][/path]", c.publicURL)
		}
		s.PublicURL = u
	}
	s.AllowedOrigins = c.allowedOrigins
	if err := server.CheckAllowedHosts(c.allowedHosts); err != nil {
		return s, fmt.Errorf("cannot parse --allowed-hosts: %w", err)
	}
	s.AllowedHosts = c.allowedHosts
	// A name to listen on is a name the server is reached under.
	if h, _, err := net.SplitHostPort(c.listen); err == nil && h != "" {
		if _, err := netip.ParseAddr(h); err != nil {
			s.AllowedHosts = append(slices.Clip(s.AllowedHosts), h)
		}
	}
	s.TrustForwardedFor = c.trustForwardedFor
	s.ImageDir = c.image
	s.TunnelHost = c.tunnelHost
	return s, nil
}

// allowOrigins gives the relay the hosts of --allowed-origins: it matches
// websocket origins by host, and the public URL's host is one of them.
func (c *serveConfig) allowOrigins(p *serveParts) error {
	for _, o := range c.allowedOrigins {
		if o == "*" {
			p.relay.AllowedOrigins = []string{"*"}
			return nil
		}
		u, err := url.Parse(o)
		if err != nil || u.Host == "" {
			return fmt.Errorf("bad --allowed-origins entry %q: want scheme://host[:port]", o)
		}
		p.relay.AllowedOrigins = append(p.relay.AllowedOrigins, u.Host)
	}
	if p.server.PublicURL != nil && len(p.relay.AllowedOrigins) > 0 {
		p.relay.AllowedOrigins = append(p.relay.AllowedOrigins, p.server.PublicURL.Host)
	}
	return nil
}

func (c *serveConfig) tunnelConfig() (tunnel.Config, error) {
	t := tunnel.DefaultConfig()
	var err error
	if t.PortFirst, t.PortLast, err = parsePortRange(c.tunnelPorts); err != nil {
		return t, fmt.Errorf("cannot parse --tunnel-ports: %w", err)
	}
	if t.PortBind, err = netip.ParseAddr(c.tunnelBind); err != nil {
		return t, fmt.Errorf("cannot parse --tunnel-bind: %w", err)
	}
	if c.tunnelDomain == "" || strings.Contains(c.tunnelDomain, "/") {
		return t, fmt.Errorf("bad --tunnel-domain %q", c.tunnelDomain)
	}
	t.Domain = c.tunnelDomain
	t.HandshakeTimeout = c.tunnelHandshake
	tl := c.tunnelLimits
	t.MaxConnsPerSource, t.MaxConnsPerSession, t.MaxPreauthPerSession = tl.MaxConnsPerSource, tl.MaxConnsPerSession, tl.MaxPreauthPerSession
	t.AuthTimeout, t.MaxHandshakesPerSource = tl.AuthTimeout, tl.MaxHandshakesPerSource
	t.DialTimeout = tl.DialTimeout
	if (c.tunnelCert == "") != (c.tunnelKey == "") {
		return t, errors.New("--tunnel-tls-cert and --tunnel-tls-key go together")
	}
	if c.tunnelCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tunnelCert, c.tunnelKey)
		if err != nil {
			return t, fmt.Errorf("cannot load the tunnel certificate: %w", err)
		}
		t.Certificate = &cert
	}
	return t, nil
}

func newServeCommand(e *env) *ffcli.Command {
	var cfg serveConfig
	fs := newFlagSet("serve", e)
	cfg.registerFlags(fs)
	return &ffcli.Command{
		Name:       "serve",
		ShortUsage: "pgwasm serve [flags]",
		ShortHelp:  "serve the web app, the VM image, the network relay and the inbound tunnel",
		LongHelp:   "Every flag can also be set as a PGWASM_* environment variable (--tunnel-ports: PGWASM_TUNNEL_PORTS). See docs/serve.md.",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("serve takes no arguments, got %q", args)
			}
			return runServe(ctx, e, &cfg)
		},
	}
}

// runServe serves until ctx ends.
func runServe(ctx context.Context, e *env, cfg *serveConfig) error {
	p, err := cfg.parts()
	if err != nil {
		return err
	}
	log := e.logger
	app, err := web.NewHandler(web.Assets())
	if err != nil {
		return fmt.Errorf("cannot load the web app: %w", err)
	}
	if !app.Built() {
		log.Warn("the web app is not built into this binary: run make web, then rebuild")
	}
	p.server.App = app
	sc := stack.Config{
		Relay: p.relay, Tunnel: p.tunnel, Server: p.server,
		LazySessions:    cfg.lazySessions,
		Listen:          cfg.listen,
		SNIPublicPort:   uint16(cfg.sniPublicPort),
		ShutdownTimeout: cfg.shutdownTimeout,
		DrainDelay:      cfg.drainDelay,
		Log:             log,
	}
	if !off(cfg.sniListen) {
		sc.SNIListen = cfg.sniListen
	}
	st, err := stack.New(ctx, sc)
	if err != nil {
		return err
	}
	defer st.Close()
	addrs := st.Addrs()
	log.Info("serving", "http", addrs.HTTP, "sni", addrs.SNI,
		"tunnel_ports", cfg.tunnelPorts, "image", cfg.image, "egress_allow", cfg.allowEgress.String())
	if cfg.readyFile != "" {
		if err := writeReadyFile(cfg.readyFile, addrs); err != nil {
			return err
		}
		defer os.Remove(cfg.readyFile)
	}
	return st.Serve(ctx)
}

// writeReadyFile writes addrs as JSON to path, whole or not at all: a
// reader that sees the file sees all of it.
func writeReadyFile(path string, addrs stack.Addrs) error {
	b, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write --ready-file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot write --ready-file: %w", err)
	}
	return nil
}
