package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/peterbourgon/ff/v3"

	"github.com/pgwasm/pgwasm/internal/stack"
	"github.com/pgwasm/pgwasm/internal/testkit"
	"github.com/pgwasm/pgwasm/internal/testkit/servetest"
)

func parseServe(t *testing.T, args []string, env map[string]string) (*serveConfig, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var cfg serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.registerFlags(fs)
	if err := ff.Parse(fs, args, envOptions()...); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func TestServeFlags(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(serveParts) string
	}{
		{"defaults", nil, nil, func(p serveParts) string {
			if p.tunnel.PortFirst != 15432 || p.tunnel.PortLast != 15531 || p.tunnel.Domain != "pg.localhost" ||
				p.tunnel.PortBind != netip.MustParseAddr("127.0.0.1") || len(p.relay.Egress.Allow) != 0 || p.server.ImageDir != "build/image" {
				return "unexpected defaults"
			}
			return ""
		}},
		{"flags", []string{"--tunnel-ports", "20000-20009", "--allow-egress", "127.0.0.1:5432", "--allow-egress", "10.0.0.0/8,192.168.1.1", "--max-sessions", "7", "--session-lifetime", "2h"}, nil, func(p serveParts) string {
			if p.tunnel.PortFirst != 20000 || p.tunnel.PortLast != 20009 || len(p.relay.Egress.Allow) != 3 || p.relay.MaxSessions != 7 || p.relay.Lifetime != 2*time.Hour {
				return "flags not applied"
			}
			return ""
		}},
		{"env", nil, map[string]string{"PGWASM_TUNNEL_PORTS": "off", "PGWASM_ALLOW_EGRESS": "127.0.0.1:5432,::1", "PGWASM_TUNNEL_DOMAIN": "db.example.com", "PGWASM_ALLOWED_ORIGINS": "https://docs.example.org"}, func(p serveParts) string {
			if p.tunnel.PortFirst != 0 || len(p.relay.Egress.Allow) != 2 || p.tunnel.Domain != "db.example.com" ||
				!slices.Equal(p.relay.AllowedOrigins, []string{"docs.example.org"}) || !slices.Equal(p.server.AllowedOrigins, []string{"https://docs.example.org"}) {
				return "env not applied"
			}
			return ""
		}},
		{"session secret from env", nil, map[string]string{"PGWASM_SESSION_SECRET": "0123456789abcdef-env"}, func(p serveParts) string {
			if string(p.relay.SessionSecret) != "0123456789abcdef-env" || p.relay.ClientAddr == nil {
				return "secret " + string(p.relay.SessionSecret)
			}
			return ""
		}},
		{"session secret file", []string{"--session-secret-file", "testdata/session-secret"}, nil, func(p serveParts) string {
			if string(p.relay.SessionSecret) != "0123456789abcdef-from-a-file" {
				return "secret " + string(p.relay.SessionSecret)
			}
			return ""
		}},
		{"flag beats env", []string{"--tunnel-domain", "a.example"}, map[string]string{"PGWASM_TUNNEL_DOMAIN": "b.example"}, func(p serveParts) string {
			if p.tunnel.Domain != "a.example" {
				return "domain " + p.tunnel.Domain
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseServe(t, tt.args, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			p, err := cfg.parts()
			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.check(p); msg != "" {
				t.Errorf("%s: %+v", msg, p)
			}
		})
	}
}

func TestServeFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--tunnel-ports", "5-4"}, "tunnel-ports"},
		{[]string{"--tunnel-ports", "x"}, "tunnel-ports"},
		{[]string{"--public-url", "ftp://x"}, "public-url"},
		{[]string{"--allow-egress", "example.com"}, "allow-egress"},
		{[]string{"--tunnel-tls-cert", "/c.pem"}, "go together"},
		{[]string{"--tunnel-bind", "localhost"}, "tunnel-bind"},
		{[]string{"--allowed-origins", "docs.example.org"}, "allowed-origins"},
		{[]string{"--session-secret", "short"}, "at least 16"},
		{[]string{"--session-secret", "0123456789abcdef", "--session-secret-file", "testdata/session-secret"}, "not both"},
		{[]string{"--session-secret-file", "testdata/nosuchfile"}, "session-secret-file"},
		{[]string{"--drain-delay", "10s"}, "less than --shutdown-timeout"},
		{[]string{"--lazy-sessions", "--session-secret", "0123456789abcdef"}, "tunnel-ports off"},
		{[]string{"--lazy-sessions", "--tunnel-ports", "off"}, "session-secret"},
		{[]string{"--drain-delay", "-1s"}, "drain-delay"},
	}
	for _, tt := range tests {
		cfg, err := parseServe(t, tt.args, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cfg.parts(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parts(%q) = %v, want an error about %s", tt.args, err, tt.want)
		}
	}
}

// TestServeRunsAndStops runs the real command on loopback and stops it
// through its context, as SIGTERM does.
func TestServeRunsAndStops(t *testing.T) {
	port := testkit.FreePort(t, "127.0.0.1")
	srv := serveInProcess(t,
		"--listen", "127.0.0.1:0", "--tunnel-sni-listen", "127.0.0.1:0",
		"--tunnel-ports", itoa(port)+"-"+itoa(port),
		"--dns", "127.0.0.1:1", "--shutdown-timeout", "5s")
	a, cancel, done := srv.Addrs, srv.stop, srv.done
	resp, err := http.Get("http://" + a.HTTP + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz = %v, %v", resp, err)
	}
	resp.Body.Close()
	got, err := servetest.CreateSession(context.Background(), "http://"+a.HTTP)
	if err != nil {
		t.Fatal(err)
	}
	_, sniPort, _ := net.SplitHostPort(a.SNI)
	if !strings.HasPrefix(got.RelayURL, "ws://"+a.HTTP+"/relay/") || got.Tunnel == nil || got.Tunnel.Port == nil || got.Tunnel.SNI == nil ||
		int(got.Tunnel.Port.Port) != port || itoa(int(got.Tunnel.SNI.Port)) != sniPort {
		t.Fatalf("POST /api/sessions = %+v", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop")
	}
	if _, err := os.Stat(srv.readyFile); !os.IsNotExist(err) {
		t.Errorf("ready file still there after shutdown: %v", err)
	}
	if c, err := net.Dial("tcp", a.HTTP); err == nil {
		c.Close()
		t.Error("HTTP port still open after shutdown")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// inProcess is the serve command running in this process.
type inProcess struct {
	stack.Addrs
	readyFile string
	stop      context.CancelFunc // as SIGTERM does
	done      <-chan error       // what the command returned
}

// serveInProcess runs the serve command with args and returns once its
// --ready-file names the bound addresses.
func serveInProcess(t *testing.T, args ...string) *inProcess {
	t.Helper()
	cfg, err := parseServe(t, args, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.readyFile = filepath.Join(t.TempDir(), "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{stdout: io.Discard, stderr: io.Discard, logger: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		err := runServe(ctx, e, cfg)
		close(exited)
		done <- err
	}()
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	a, err := servetest.WaitReady(wctx, cfg.readyFile, exited)
	if errors.Is(err, servetest.ErrExited) {
		t.Fatalf("serve ended early: %v", <-done)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &inProcess{Addrs: a, readyFile: cfg.readyFile, stop: cancel, done: done}
}

// TestServeDrain stops the real command as SIGTERM does, with a drain
// delay: readiness fails at once while liveness holds, new sessions get
// 503, the attached websocket is closed with 4503 "draining" once the delay
// is over (not before), and the process is gone within --shutdown-timeout.
func TestServeDrain(t *testing.T) {
	srv := serveInProcess(t,
		"--listen", "127.0.0.1:0", "--tunnel-sni-listen", "127.0.0.1:0", "--tunnel-ports", "off",
		"--dns", "127.0.0.1:1", "--shutdown-timeout", "6s", "--drain-delay", "1500ms")
	a, cancel, done := srv.Addrs, srv.stop, srv.done
	base := "http://" + a.HTTP
	status := func(method, path string) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("GET", "/readyz"); got != 200 {
		t.Fatalf("readyz before the drain = %d", got)
	}
	sess, err := servetest.CreateSession(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	wsctx, wscancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wscancel()
	ws, _, err := websocket.Dial(wsctx, sess.RelayURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.Read(wsctx); err != nil {
				closed <- err
				return
			}
		}
	}()

	// Dial returns after the upgrade, before the server has attached the
	// websocket to its session; one attached after the drain began is
	// sent on at once (correctly), which is not what this test checks.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n, err := servetest.Metric(context.Background(), base, "pgwasm_relay_websockets")
		if err != nil {
			t.Fatal(err)
		}
		if n == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("websocket not attached after 20 s (pgwasm_relay_websockets %q)", n)
		}
	}

	signalled := time.Now()
	cancel()
	time.Sleep(300 * time.Millisecond)
	if got := status("GET", "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("readyz while draining = %d, want 503", got)
	}
	if got := status("GET", "/livez"); got != 200 {
		t.Errorf("livez while draining = %d, want 200", got)
	}
	if got := status("POST", "/api/sessions"); got != http.StatusServiceUnavailable {
		t.Errorf("POST /api/sessions while draining = %d, want 503", got)
	}
	select {
	case err := <-closed:
		t.Fatalf("websocket closed %v after the signal, before the drain delay: %v", time.Since(signalled), err)
	default:
	}
	select {
	case err := <-closed:
		if code := websocket.CloseStatus(err); code != 4503 {
			t.Errorf("websocket closed with %v (code %d), want 4503", err, code)
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) && ce.Reason != "draining" {
			t.Errorf("close reason %q, want draining", ce.Reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("websocket not closed by the drain")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v", err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("serve did not stop within its shutdown timeout")
	}
	if d := time.Since(signalled); d > 6*time.Second+500*time.Millisecond {
		t.Errorf("shutdown took %v, want within --shutdown-timeout 6s", d)
	}
}

// TestKubernetesEnvIsServeFlags: every PGWASM_* variable the Kubernetes
// manifest sets is a serve flag (or the log settings), and the whole set
// parses: a renamed flag would otherwise be ignored there silently.
func TestKubernetesEnvIsServeFlags(t *testing.T) {
	b, err := os.ReadFile("../../deploy/kubernetes/pgwasm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.registerFlags(fs)
	env := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*- name: (PGWASM_\w+)\n\s*(value: "?([^"\n]*)"?|valueFrom:)`).FindAllStringSubmatch(string(b), -1) {
		name, value := m[1], m[3]
		if name == "PGWASM_LOG_FORMAT" || name == "PGWASM_DEBUG" {
			continue
		}
		flagName := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "PGWASM_")), "_", "-")
		if fs.Lookup(flagName) == nil {
			t.Errorf("%s in deploy/kubernetes/pgwasm.yaml is no serve flag (--%s)", name, flagName)
		}
		if name == "PGWASM_SESSION_SECRET" {
			value = "0123456789abcdef-from-a-secret"
		}
		env[name] = value
	}
	if len(env) < 10 {
		t.Fatalf("found only %d variables in the manifest: %v", len(env), env)
	}
	c, err := parseServe(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.parts(); err != nil {
		t.Errorf("the manifest's settings do not make a valid serve configuration: %v", err)
	}
}
