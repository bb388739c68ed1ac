package server

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/web"
)

func TestHostAllowList(t *testing.T) {
	pub, _ := url.Parse("https://pg.example.com/base/")
	l, err := newHostAllowList([]string{"lan-box", "*.corp.example", "Other.Example."}, pub)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host string
		want bool
	}{
		{"127.0.0.1:8080", true},
		{"127.0.0.1", true},
		{"[::1]:8080", true},
		{"[::1]", true},
		{"192.168.1.5:8080", true}, // an address cannot be rebound
		{"localhost:8080", true},
		{"LOCALHOST.", true},
		{"app.localhost:8080", true},
		{"pg.example.com", true},
		{"pg.example.com:443", true},
		{"lan-box:8080", true},
		{"a.corp.example", true},
		{"other.example", true},
		{"", true}, // HTTP/1.0 without Host: not a browser
		{"evil.example:8080", false},
		{"localhost.evil.example", false},
		{"corp.example", false},
		{"example.com", false},
		{"127.0.0.1.nip.io", false},
	}
	for _, tt := range tests {
		if got := l.allows(tt.host); got != tt.want {
			t.Errorf("allows(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
	any, _ := newHostAllowList([]string{"*"}, nil)
	if !any.allows("evil.example") {
		t.Error("* does not allow every host")
	}
	for _, bad := range []string{"http://x.example", "x.example:8080", "x.example/path", "a b", "*x.example", ""} {
		if err := CheckAllowedHosts([]string{bad}); err == nil {
			t.Errorf("CheckAllowedHosts(%q) = nil, want an error", bad)
		}
	}
}

// TestRebinding: a request shaped like DNS rebinding (Host and Origin both
// an attacker's name, the connection to our loopback address) creates no
// session and opens no relay websocket; the real relay serves the
// websocket here. The same requests under an allowed name pass.
func TestRebinding(t *testing.T) {
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	rcfg := relay.DefaultConfig()
	rcfg.DNSUpstreams = []string{"127.0.0.1:1"}
	mgr, err := relay.NewManager(rcfg, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Relay: mgr, Gatherer: reg, ImageDir: t.TempDir(), AllowedHosts: []string{"pg.lan"}},
		NewRelaySessions(mgr), log, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { mgr.Close(); srv.Close() })
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]

	do := func(method, path, host string, hdr map[string]string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	create := func(host string) (*http.Response, SessionInfo) {
		resp := do("POST", "/api/sessions", host, map[string]string{"Origin": "http://" + host})
		var s SessionInfo
		if resp.StatusCode == http.StatusCreated {
			json.NewDecoder(resp.Body).Decode(&s)
		}
		return resp, s
	}
	upgrade := func(host string, s SessionInfo) int {
		resp := do("GET", "/relay/"+s.ID+"?token="+url.QueryEscape(s.Token), host, map[string]string{
			"Origin": "http://" + host, "Connection": "Upgrade", "Upgrade": "websocket",
			"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
		})
		return resp.StatusCode
	}

	evil := "evil.example:" + port
	if resp, _ := create(evil); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("POST /api/sessions with Host and Origin %s = %d, want 421", evil, resp.StatusCode)
	}
	if mgr.Len() != 0 {
		t.Errorf("%d sessions after the refused POST, want 0", mgr.Len())
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "pg.lan:" + port} {
		resp, s := create(host)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /api/sessions with Host %s = %d, want 201", host, resp.StatusCode)
		}
		if code := upgrade(evil, s); code != http.StatusMisdirectedRequest {
			t.Errorf("websocket with Host and Origin %s = %d, want 421", evil, code)
		}
		if code := upgrade(host, s); code != http.StatusSwitchingProtocols {
			t.Errorf("websocket with Host and Origin %s = %d, want 101", host, code)
		}
	}
	// The page and the metrics are refused too; health checks are not.
	for path, want := range map[string]int{"/": 421, "/metrics": 421, "/image/x": 421, "/healthz": 200} {
		if resp := do("GET", path, evil, nil); resp.StatusCode != want {
			t.Errorf("GET %s with Host %s = %d, want %d", path, evil, resp.StatusCode, want)
		}
	}
	if n := testutil.ToFloat64(h.refused.WithLabelValues("host")); n != 7 {
		t.Errorf(`pgwasm_http_refused_total{reason="host"} = %v, want 7`, n)
	}
}

// TestSecurityHeaders: every response says nosniff, no referrer, no
// framing; the page gets a CSP fit for v86, everything else one that
// allows nothing; only the embedding files carry CORS.
func TestSecurityHeaders(t *testing.T) {
	app, err := web.NewHandler(fstest.MapFS{
		"index.html":   {Data: []byte(`<!doctype html><script type="module" src="app.js"></script>`)},
		"example.html": {Data: []byte(`<!doctype html><script type="module">import { boot } from "./pgwasm.js";</script>`)},
		"app.js":       {Data: []byte("console.log(1)")},
		"pgwasm.js":    {Data: []byte("export function boot() {}")},
		"v86.wasm":     {Data: []byte("\x00asm")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(app.ScriptHashes()) != 1 {
		t.Fatalf("ScriptHashes() = %q, want the example's one", app.ScriptHashes())
	}
	f := newFixture(t, func(c *Config) { c.App = app })
	host := strings.TrimPrefix(f.srv.URL, "http://")
	pageCSP := "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'"
	for _, h := range app.ScriptHashes() {
		pageCSP += " " + h
	}
	pageCSP += "; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; connect-src 'self' ws://" + host
	tests := []struct {
		method, path string
		csp, acao    string
	}{
		{"GET", "/", pageCSP, ""},
		{"GET", "/example.html", pageCSP, ""},
		{"GET", "/app.js", pageCSP, ""},
		{"GET", "/pgwasm.js", pageCSP, "*"},
		{"GET", "/v86.wasm", pageCSP, "*"},
		{"GET", "/nosuch", pageCSP, ""},
		{"POST", "/api/sessions", lockedCSP, ""},
		{"GET", "/api/sessions/nope", lockedCSP, ""},
		{"GET", "/image/missing", lockedCSP, ""},
		{"GET", "/healthz", lockedCSP, ""},
		{"GET", "/metrics", lockedCSP, ""},
	}
	for _, tt := range tests {
		resp, _ := f.do(t, tt.method, tt.path, nil)
		hdr := resp.Header
		for k, want := range map[string]string{
			"X-Content-Type-Options":      "nosniff",
			"Referrer-Policy":             "no-referrer",
			"X-Frame-Options":             "DENY",
			"Content-Security-Policy":     tt.csp,
			"Access-Control-Allow-Origin": tt.acao,
		} {
			if got := hdr.Get(k); got != want {
				t.Errorf("%s %s: %s = %q, want %q", tt.method, tt.path, k, got, want)
			}
		}
	}

	// Behind --public-url the relay websocket goes there.
	pub, _ := url.Parse("https://pg.example.com")
	f = newFixture(t, func(c *Config) { c.App = app; c.PublicURL = pub })
	resp, _ := f.do(t, "GET", "/", nil)
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.HasSuffix(csp, "; connect-src 'self' wss://pg.example.com") {
		t.Errorf("CSP behind --public-url = %q, want connect-src 'self' wss://pg.example.com", csp)
	}
}

func TestOriginRefusalCounted(t *testing.T) {
	f := newFixture(t, nil)
	if resp, _ := f.do(t, "POST", "/api/sessions", map[string]string{"Origin": "https://evil.example"}); resp.StatusCode != 403 {
		t.Fatalf("foreign origin = %d, want 403", resp.StatusCode)
	}
	_, body := f.do(t, "GET", "/metrics", nil)
	if !strings.Contains(body, `pgwasm_http_refused_total{reason="origin"} 1`) {
		t.Errorf("metrics lack the origin refusal:\n%.2000s", body)
	}
}
