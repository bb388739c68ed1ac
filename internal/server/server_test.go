package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgwasm/pgwasm/internal/tunnel"
)

// memSessions stands in for relay.Manager, which needs a websocket VM to
// mean anything; test/relay runs the server against the real one.
type memSessions struct {
	mu      sync.Mutex
	m       map[string]*memSession
	n       int
	limit   int
	clients []netip.Addr
}

type memSession struct {
	id, token string
	done      chan struct{}
	expires   time.Time
}

func (s *memSession) ID() string            { return s.id }
func (s *memSession) Token() string         { return s.token }
func (s *memSession) Done() <-chan struct{} { return s.done }
func (s *memSession) ExpiresAt() time.Time  { return s.expires }
func (s *memSession) DialGuest(context.Context, uint16) (net.Conn, error) {
	return nil, fmt.Errorf("no VM in this test")
}

func (m *memSessions) Create(_ context.Context, client netip.Addr) (Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.m) >= m.limit {
		return nil, fmt.Errorf("%w: %d sessions", ErrLimit, m.limit)
	}
	m.n++
	s := &memSession{id: fmt.Sprintf("s%d", m.n), token: fmt.Sprintf("tok%d", m.n), done: make(chan struct{}),
		expires: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	m.m[s.id] = s
	m.clients = append(m.clients, client)
	return s, nil
}

func (m *memSessions) Lookup(id string) (Session, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.m[id]
	return s, ok
}

func (m *memSessions) lookupTunnel(id string) (tunnel.Session, bool) { return m.Lookup(id) }

func (m *memSessions) Delete(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.m[id]
	if !ok {
		return fmt.Errorf("no session %s", id)
	}
	close(s.done)
	delete(m.m, id)
	return nil
}

type fixture struct {
	srv      *httptest.Server
	sessions *memSessions
	imageDir string
	reg      *prometheus.Registry
	portLo   uint16
}

func newFixture(t *testing.T, mutate func(*Config)) *fixture {
	t.Helper()
	f := &fixture{sessions: &memSessions{m: map[string]*memSession{}, limit: 2}, imageDir: t.TempDir(), reg: prometheus.NewRegistry()}
	tcfg := tunnel.DefaultConfig()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.portLo = uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	tcfg.PortFirst, tcfg.PortLast = f.portLo, f.portLo // one port: the second session gets none
	tun, err := tunnel.New(tcfg, f.sessions.lookupTunnel, slog.New(slog.DiscardHandler), f.reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tun.Close() })
	cfg := Config{
		ImageDir: f.imageDir,
		Relay:    http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "relay "+r.URL.Path) }),
		Gatherer: f.reg,
		Tunnel:   tun,
		SNIPort:  5433,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg, f.sessions, slog.New(slog.DiscardHandler), f.reg)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(s)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestSessionAPI(t *testing.T) {
	f := newFixture(t, nil)
	host := strings.TrimPrefix(f.srv.URL, "http://")

	resp, body := f.do(t, "POST", "/api/sessions", nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST = %d %s", resp.StatusCode, body)
	}
	var got SessionInfo
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Tunnel == nil || got.Tunnel.Port == nil {
		t.Fatalf("POST = %s: no tunnel port", body)
	}
	// The tunnel port rides in the relay URL: a server that re-creates
	// the session after a restart gives it the same port if it can.
	want := fmt.Sprintf("ws://%s/relay/s1?port=%d&token=tok1", host, got.Tunnel.Port.Port)
	if got.ID != "s1" || got.Token != "tok1" || got.RelayURL != want {
		t.Errorf("POST = %+v, want id s1, token tok1, relay_url %s", got, want)
	}
	if got.ExpiresAt == nil || !got.ExpiresAt.Equal(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("expires_at = %v", got.ExpiresAt)
	}
	if got.Tunnel == nil || got.Tunnel.Port == nil || got.Tunnel.SNI == nil {
		t.Fatalf("tunnel = %+v, want port and sni", got.Tunnel)
	}
	wantPort := fmt.Sprintf("postgres://postgres:PASSWORD@127.0.0.1:%d/postgres?sslmode=require", f.portLo)
	if got.Tunnel.Port.URL != wantPort || got.Tunnel.Port.Port != f.portLo {
		t.Errorf("port url = %q, want %q", got.Tunnel.Port.URL, wantPort)
	}
	wantSNI := "postgres://postgres:PASSWORD@s1.pg.localhost:5433/postgres?hostaddr=127.0.0.1&sslmode=require"
	if got.Tunnel.SNI.URL != wantSNI || got.Tunnel.SNI.Host != "s1.pg.localhost" {
		t.Errorf("sni url = %q, want %q", got.Tunnel.SNI.URL, wantSNI)
	}
	if c := f.sessions.clients[0]; c != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("session created for %v, want 127.0.0.1", c)
	}
	// The port is really open.
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", f.portLo)); err != nil {
		t.Errorf("tunnel port not open: %v", err)
	} else {
		c.Close()
	}

	// The range has one port: the second session still works, without one.
	resp, body = f.do(t, "POST", "/api/sessions", nil)
	if resp.StatusCode != http.StatusCreated || !strings.Contains(body, `"port_error": "no free tunnel port`) || !strings.Contains(body, `"sni"`) {
		t.Errorf("second POST = %d %s, want 201 with port_error and sni", resp.StatusCode, body)
	}
	resp, body = f.do(t, "POST", "/api/sessions", nil)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, `"error"`) || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third POST = %d %s, want 429", resp.StatusCode, body)
	}

	tests := []struct {
		name, method, path, auth string
		code                     int
		contains                 string
	}{
		{"get no token", "GET", "/api/sessions/s1", "", 401, `"error"`},
		{"get wrong token", "GET", "/api/sessions/s1", "Bearer tok2", 401, "token"},
		{"get token of other session", "GET", "/api/sessions/s1", "Bearer tok2", 401, "token"},
		{"get not bearer", "GET", "/api/sessions/s1", "Basic tok1", 401, "token"},
		{"get unknown", "GET", "/api/sessions/nope", "Bearer tok1", 404, "no such session"},
		{"get", "GET", "/api/sessions/s1", "Bearer tok1", 200, `"relay_url"`},
		{"delete wrong token", "DELETE", "/api/sessions/s1", "Bearer x", 401, "token"},
		{"delete", "DELETE", "/api/sessions/s1", "Bearer tok1", 204, ""},
		{"get deleted", "GET", "/api/sessions/s1", "Bearer tok1", 404, "no such session"},
		{"unknown endpoint", "GET", "/api/nothing", "", 404, `"error"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.do(t, tt.method, tt.path, map[string]string{"Authorization": tt.auth})
			if resp.StatusCode != tt.code || !strings.Contains(body, tt.contains) {
				t.Errorf("%s %s = %d %s, want %d containing %q", tt.method, tt.path, resp.StatusCode, body, tt.code, tt.contains)
			}
			if tt.code != 204 && resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("Content-Type = %q", resp.Header.Get("Content-Type"))
			}
			if tt.name == "get" && strings.Contains(body, `"token"`) {
				t.Errorf("GET repeats the token: %s", body)
			}
		})
	}
	// Deleting freed the tunnel port.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", f.portLo))
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("tunnel port still open after DELETE")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPublicURLAndForwardedFor(t *testing.T) {
	pub, _ := url.Parse("https://db.example.com/pg/")
	f := newFixture(t, func(c *Config) {
		c.PublicURL = pub
		c.TrustForwardedFor = true
		c.TunnelHost = "tunnel.example.com"
	})
	resp, body := f.do(t, "POST", "/api/sessions", map[string]string{"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
	if resp.StatusCode != 201 {
		t.Fatalf("POST = %d %s", resp.StatusCode, body)
	}
	var got SessionInfo
	json.Unmarshal([]byte(body), &got)
	if want := fmt.Sprintf("wss://db.example.com/pg/relay/s1?port=%d&token=tok1", got.Tunnel.Port.Port); got.RelayURL != want {
		t.Errorf("relay_url = %q, want %q", got.RelayURL, want)
	}
	if want := "postgres://postgres:PASSWORD@s1.pg.localhost:5433/postgres?sslmode=require"; got.Tunnel.SNI.URL != want {
		t.Errorf("sni url = %q, want %q", got.Tunnel.SNI.URL, want)
	}
	if !strings.HasPrefix(got.Tunnel.Port.URL, "postgres://postgres:PASSWORD@tunnel.example.com:") {
		t.Errorf("port url = %q", got.Tunnel.Port.URL)
	}
	if c := f.sessions.clients[0]; c != netip.MustParseAddr("203.0.113.9") {
		t.Errorf("client = %v, want the last X-Forwarded-For hop", c)
	}
}

func TestCORS(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.AllowedOrigins = []string{"https://docs.example.org"} })
	tests := []struct {
		name, method, origin string
		code                 int
		acao                 string
	}{
		{"no origin", "POST", "", 201, ""},
		{"same origin", "POST", f.srv.URL, 201, f.srv.URL},
		{"allowed origin", "POST", "https://docs.example.org", 429, "https://docs.example.org"},
		{"foreign origin", "POST", "https://evil.example", 403, ""},
		{"preflight allowed", "OPTIONS", "https://docs.example.org", 204, "https://docs.example.org"},
		{"preflight foreign", "OPTIONS", "https://evil.example", 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.do(t, tt.method, "/api/sessions", map[string]string{"Origin": tt.origin})
			if resp.StatusCode != tt.code || resp.Header.Get("Access-Control-Allow-Origin") != tt.acao {
				t.Errorf("%s from %q = %d, ACAO %q (%s); want %d, %q", tt.method, tt.origin, resp.StatusCode,
					resp.Header.Get("Access-Control-Allow-Origin"), body, tt.code, tt.acao)
			}
		})
	}
	if _, err := New(Config{AllowedOrigins: []string{"docs.example.org"}}, f.sessions, slog.New(slog.DiscardHandler), nil); err == nil {
		t.Error("New accepted an origin without a scheme")
	}
}

func TestImage(t *testing.T) {
	f := newFixture(t, nil)
	files := map[string]string{
		"fs.json":             `{"version":3}`,
		"fs/0123abcd.bin":     "0123456789",
		"fs/89abcdef.bin.zst": "zstd bytes",
		"state-256.bin.zst":   "state",
		"v86.wasm":            "\x00asm",
		"bzImage":             "kernel",
	}
	for name, body := range files {
		p := filepath.Join(f.imageDir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(body), 0o644)
	}
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o644)
	os.Symlink(outside, filepath.Join(f.imageDir, "escape"))
	os.WriteFile(filepath.Join(f.imageDir, ".hidden"), []byte("x"), 0o644)

	tests := []struct {
		path, rangeHdr string
		code           int
		ctype, cache   string
		body           string
	}{
		{"/image/fs.json", "", 200, "application/json", "no-cache", `{"version":3}`},
		{"/image/fs/0123abcd.bin", "", 200, "application/octet-stream", "public, max-age=31536000, immutable", "0123456789"},
		{"/image/fs/0123abcd.bin", "bytes=2-4", 206, "application/octet-stream", "public, max-age=31536000, immutable", "234"},
		{"/image/fs/89abcdef.bin.zst", "", 200, "application/octet-stream", "public, max-age=31536000, immutable", "zstd bytes"},
		{"/image/state-256.bin.zst", "", 200, "application/octet-stream", "no-cache", "state"},
		{"/image/v86.wasm", "", 200, "application/wasm", "no-cache", "\x00asm"},
		{"/image/bzImage", "", 200, "application/octet-stream", "no-cache", "kernel"},
		{"/image/fs/", "", 404, "", "", ""},
		{"/image/missing.bin", "", 404, "", "", ""},
		{"/image/escape", "", 404, "", "", ""},
		{"/image/.hidden", "", 404, "", "", ""},
		{"/image/../server.go", "", 404, "", "", ""},
		{"/image/fs/%2e%2e/%2e%2e/etc/passwd", "", 404, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.path+tt.rangeHdr, func(t *testing.T) {
			resp, body := f.do(t, "GET", tt.path, map[string]string{"Range": tt.rangeHdr})
			if resp.StatusCode != tt.code {
				t.Fatalf("GET %s = %d %q, want %d", tt.path, resp.StatusCode, body, tt.code)
			}
			if tt.code >= 300 {
				return
			}
			if body != tt.body || resp.Header.Get("Content-Type") != tt.ctype || resp.Header.Get("Cache-Control") != tt.cache {
				t.Errorf("GET %s = %q %q %q, want %q %q %q", tt.path, body, resp.Header.Get("Content-Type"),
					resp.Header.Get("Cache-Control"), tt.body, tt.ctype, tt.cache)
			}
			etag := resp.Header.Get("ETag")
			resp2, _ := f.do(t, "GET", tt.path, map[string]string{"If-None-Match": etag})
			if etag == "" || resp2.StatusCode != http.StatusNotModified {
				t.Errorf("revalidation with ETag %q = %d, want 304", etag, resp2.StatusCode)
			}
		})
	}
}

func TestAppHealthMetrics(t *testing.T) {
	f := newFixture(t, nil)
	tests := []struct {
		path     string
		code     int
		contains string
	}{
		{"/", 200, "<h1>pgwasm</h1>"},
		{"/healthz", 200, "ok"},
		{"/relay/abc", 200, "relay /relay/abc"},
		{"/metrics", 200, `pgwasm_http_requests_total{code="200",route="healthz"} 1`},
		{"/metrics", 200, "pgwasm_tunnel_ports_in_use"},
	}
	for _, tt := range tests {
		resp, body := f.do(t, "GET", tt.path, nil)
		if resp.StatusCode != tt.code || !strings.Contains(body, tt.contains) {
			t.Errorf("GET %s = %d, want %d containing %q; got %.300s", tt.path, resp.StatusCode, tt.code, tt.contains, body)
		}
	}
	custom := newFixture(t, func(c *Config) {
		c.App = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "the app") })
	})
	if _, body := custom.do(t, "GET", "/anything", nil); body != "the app" {
		t.Errorf("custom app = %q", body)
	}
}
