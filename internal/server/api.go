package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/tunnel"
)

// SessionInfo is the API's view of a session (POST /api/sessions, GET
// /api/sessions/{id}); exported so that tests and the bench decode the same
// type the server writes.
type SessionInfo struct {
	ID        string      `json:"id"`
	Token     string      `json:"token,omitempty"`
	RelayURL  string      `json:"relay_url"`
	ExpiresAt *time.Time  `json:"expires_at,omitempty"`
	Tunnel    *TunnelInfo `json:"tunnel,omitempty"`
}

// TunnelInfo lists a session's ways in from outside.
type TunnelInfo struct {
	Port      *Endpoint `json:"port,omitempty"`
	PortError string    `json:"port_error,omitempty"`
	SNI       *Endpoint `json:"sni,omitempty"`
}

// Endpoint is one way in. URL holds PasswordPlaceholder for the password.
type Endpoint struct {
	Host string `json:"host"`
	Port uint16 `json:"port"`
	URL  string `json:"url"`
}

type errorJSON struct {
	Error string `json:"error"`
}

// writeJSON encodes before it writes, so a value that cannot be encoded
// becomes a 500 instead of a success status with a cut body. A failed write
// means the client is gone: nothing is left to tell.
func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code = http.StatusInternalServerError
		body = []byte(`{"error": "cannot encode the response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorJSON{Error: msg})
}

func (s *Server) createSession(w http.ResponseWriter, r *http.Request) {
	if !s.cors(w, r) {
		return
	}
	if s.draining.Load() {
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusServiceUnavailable, "server is draining (shutting down): try again")
		return
	}
	client := s.clientAddr(r)
	sess, err := s.sessions.Create(r.Context(), client)
	if err != nil {
		if errors.Is(err, ErrDraining) {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "server is draining (shutting down): try again")
			return
		}
		if errors.Is(err, ErrLimit) {
			s.log.Warn("session refused", "client", client, "err", err)
			w.Header().Set("Retry-After", "30")
			writeError(w, http.StatusTooManyRequests, err.Error())
			return
		}
		s.log.Error("cannot create session", "client", client, "err", err)
		writeError(w, http.StatusInternalServerError, "cannot create session")
		return
	}
	log := s.log.With("session", sess.ID(), "client", client)
	s.attachPort(r.Context(), sess, log)
	log.Info("session created")
	writeJSON(w, http.StatusCreated, s.describe(r, sess, true))
}

// attachPort gives sess a tunnel port when port mode is on; the tunnel
// remembers it (or why there is none) until the session ends.
func (s *Server) attachPort(ctx context.Context, sess Session, log *slog.Logger) {
	t := s.cfg.Tunnel
	if t == nil || !t.PortsEnabled() {
		return
	}
	if _, err := t.Attach(ctx, sess); err != nil {
		// Port mode is an extra: the session keeps its network and SNI.
		log.Warn("session has no tunnel port", "err", err)
	}
}

// relayPortParam carries a session's tunnel port in its relay URL, so a
// server that re-creates the session can give it the same port.
const relayPortParam = "port"

// WantedPort is the tunnel port named in a relay URL's query (see
// describe), 0 if none: the port a re-created session asks for.
func WantedPort(q url.Values) uint16 {
	p, err := strconv.ParseUint(q.Get(relayPortParam), 10, 16)
	if err != nil {
		return 0
	}
	return uint16(p)
}

// portError is why a session has no tunnel port, as the API says it.
func portError(err error) string {
	if errors.Is(err, tunnel.ErrNoFreePort) {
		return "no free tunnel port; use the SNI connection string"
	}
	return err.Error()
}

// authorized finds the session and checks its bearer token, answering the
// request itself when it fails.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) (Session, bool) {
	if !s.cors(w, r) {
		return nil, false
	}
	id := r.PathValue("id")
	sess, ok := s.sessions.Lookup(id)
	if !ok {
		writeError(w, http.StatusNotFound, "no such session")
		return nil, false
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(sess.Token())) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pgwasm"`)
		writeError(w, http.StatusUnauthorized, "missing or wrong session token")
		return nil, false
	}
	return sess, true
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	if sess, ok := s.authorized(w, r); ok {
		writeJSON(w, http.StatusOK, s.describe(r, sess, false))
	}
}

func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.authorized(w, r)
	if !ok {
		return
	}
	if err := s.sessions.Delete(sess.ID()); err != nil {
		s.log.Error("cannot delete session", "session", sess.ID(), "err", err)
		writeError(w, http.StatusInternalServerError, "cannot delete session")
		return
	}
	s.log.Info("session deleted", "session", sess.ID())
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) preflight(w http.ResponseWriter, r *http.Request) {
	if s.cors(w, r) {
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
		w.Header().Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
	}
}

// cors checks the Origin of an API request and sets the CORS headers. It
// refuses (403) foreign origins: the browser would hide the answer anyway,
// and refusing keeps other sites from spending our session quota.
func (s *Server) cors(w http.ResponseWriter, r *http.Request) bool {
	w.Header().Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not a browser, or a same-origin GET
	}
	if s.originAllowed(r, origin) {
		w.Header().Set("Access-Control-Allow-Origin", origin)
		return true
	}
	s.refused.WithLabelValues("origin").Inc()
	s.log.Info("API request from a foreign origin refused", "origin", origin)
	writeError(w, http.StatusForbidden, "origin not allowed")
	return false
}

func (s *Server) originAllowed(r *http.Request, origin string) bool {
	if slices.Contains(s.cfg.AllowedOrigins, "*") || slices.Contains(s.cfg.AllowedOrigins, origin) {
		return true
	}
	return origin == s.base(r).Scheme+"://"+s.base(r).Host
}

// base is the public base URL for this request.
func (s *Server) base(r *http.Request) *url.URL {
	if s.cfg.PublicURL != nil {
		return s.cfg.PublicURL
	}
	u := &url.URL{Scheme: "http", Host: r.Host}
	if r.TLS != nil {
		u.Scheme = "https"
	}
	return u
}

func (s *Server) describe(r *http.Request, sess Session, withToken bool) SessionInfo {
	base := s.base(r)
	relay := *base
	relay.Scheme = "ws"
	if base.Scheme == "https" {
		relay.Scheme = "wss"
	}
	relay.Path = strings.TrimSuffix(base.Path, "/") + "/relay/" + sess.ID()
	q := url.Values{"token": {sess.Token()}}
	t := s.cfg.Tunnel
	var port uint16
	var portErr error
	if t != nil {
		port, portErr = t.Port(sess.ID())
	}
	if port != 0 {
		q.Set(relayPortParam, strconv.Itoa(int(port)))
	}
	relay.RawQuery = q.Encode()
	out := SessionInfo{ID: sess.ID(), RelayURL: relay.String()}
	if withToken {
		out.Token = sess.Token()
	}
	if exp := sess.ExpiresAt(); !exp.IsZero() {
		exp = exp.UTC()
		out.ExpiresAt = &exp
	}
	if t == nil {
		return out
	}
	host := s.cfg.TunnelHost
	if host == "" {
		host = base.Hostname()
	}
	tj := &TunnelInfo{}
	if port != 0 {
		tj.Port = &Endpoint{Host: host, Port: port, URL: pgURL(host, port, nil)}
	} else if portErr != nil {
		tj.PortError = portError(portErr)
	}
	if s.cfg.SNIPort != 0 {
		name := t.Host(sess.ID())
		q := url.Values{}
		// libpq sends SNI only for names; when users reach the tunnel by an
		// address, the name goes in host and the address in hostaddr.
		if _, err := netip.ParseAddr(host); err == nil {
			q.Set("hostaddr", host)
		}
		tj.SNI = &Endpoint{Host: name, Port: s.cfg.SNIPort, URL: pgURL(name, s.cfg.SNIPort, q)}
	}
	if tj.Port != nil || tj.SNI != nil || tj.PortError != "" {
		out.Tunnel = tj
	}
	return out
}

// pgURL is a libpq connection URI for user postgres.
func pgURL(host string, port uint16, extra url.Values) string {
	q := url.Values{"sslmode": {"require"}}
	for k, v := range extra {
		q[k] = v
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword("postgres", PasswordPlaceholder),
		Host:     net.JoinHostPort(host, strconv.Itoa(int(port))),
		Path:     "/postgres",
		RawQuery: q.Encode(),
	}
	return u.String()
}
