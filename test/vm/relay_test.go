package vm_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/server"
	"github.com/pgwasm/pgwasm/internal/testkit/servetest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// hostAlias is the VM-side address of the relay host's loopback.
const hostAlias = "10.0.2.3"

// serve is a `pgwasm serve` process on loopback ports.
type serve struct {
	url string
	log string
}

// startServe runs `pgwasm serve` with the host alias and egress to
// 127.0.0.1:egressPort, and no tunnels (not needed here); extra flags follow.
func startServe(t *testing.T, egressPort int, extra ...string) *serve {
	t.Helper()
	image, bin := env(t)
	s := &serve{log: filepath.Join(t.TempDir(), "serve.log")}
	f, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	p, err := servetest.Start(context.Background(), servetest.Options{Bin: bin, Output: f, Args: append([]string{
		"--listen", "127.0.0.1:0", "--image", image,
		"--tunnel-ports", "off", "--tunnel-sni-listen", "off",
		"--host-alias", hostAlias, "--allow-egress", fmt.Sprintf("127.0.0.1:%d", egressPort),
		"--dns", "127.0.0.1:1", "--shutdown-timeout", "2s"}, extra...)})
	if err != nil {
		f.Close()
		b, _ := os.ReadFile(s.log)
		t.Fatalf("%v\n%s", err, lastLines(string(b), 30))
	}
	s.url = p.URL
	t.Cleanup(func() {
		p.Stop()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("pgwasm serve log:\n%s", lastLines(string(b), 30))
		}
	})
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (s *serve) session(t *testing.T) *server.SessionInfo {
	t.Helper()
	se, err := servetest.CreateSession(context.Background(), s.url)
	if err != nil {
		t.Fatal(err)
	}
	return se
}

func (s *serve) deleteSession(t *testing.T, se *server.SessionInfo) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, s.url+"/api/sessions/"+se.ID, nil)
	req.Header.Set("Authorization", "Bearer "+se.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE session: %s", resp.Status)
	}
}

func waitFor(ctx context.Context, what string, f func() (bool, string)) error {
	last := ""
	for {
		ok, s := f()
		if ok {
			return nil
		}
		last = s
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: still %s: %w", what, last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// A restored VM opens its relay websocket at once (v86 would wait for the
// guest's first frame), and SetRelay moves a running VM to a new relay
// session, whose network then works: the guest fetches a page from an HTTP
// server on the host through each session.
func TestRelaySwitch(t *testing.T) {
	image, _ := env(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var hits []string
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits = append(hits, r.URL.Path)
		mu.Unlock()
		fmt.Fprintf(w, "hello %s\n", strings.TrimPrefix(r.URL.Path, "/"))
	})}
	go web.Serve(l)
	defer web.Close()
	port := l.Addr().(*net.TCPAddr).Port

	srv := startServe(t, port)
	s1 := srv.session(t)
	v, err := vm.Start(ctx, vm.Options{ImageDir: image, RelayURL: s1.RelayURL})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	// Item: the websocket is open with no guest traffic (the snapshot's
	// network is down: nothing in the guest sends a frame).
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	err = waitFor(wctx, "relay websocket after restore", func() (bool, string) {
		st, err := v.Stats(ctx)
		if err != nil {
			return false, err.Error()
		}
		ws, err := servetest.Metric(ctx, srv.url, "pgwasm_relay_websockets")
		if err != nil {
			return false, err.Error()
		}
		return st.Relay == "open" && ws == "1", fmt.Sprintf("harness %q, relay websockets %q", st.Relay, ws)
	})
	wcancel()
	if err != nil {
		t.Fatal(err)
	}

	if _, err := v.Exec(ctx, "create table fetched (line text)"); err != nil {
		t.Fatal(err)
	}
	fetch := func(name string) {
		t.Helper()
		raw, err := v.Request(ctx, map[string]any{"op": "net_up"})
		if err != nil {
			t.Fatalf("net_up: %v", err)
		}
		if !strings.Contains(string(raw), `"up":true`) {
			t.Fatalf("net_up: %s", raw)
		}
		sql := fmt.Sprintf("COPY fetched FROM PROGRAM 'wget -q -T 20 -O - http://%s:%d/%s'", hostAlias, port, name)
		if _, err := v.Exec(ctx, sql); err != nil {
			t.Fatalf("wget /%s in the VM: %v", name, err)
		}
		res, err := v.Query(ctx, "select count(*) from fetched where line = $1", "hello "+name)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if *res.Rows[0][0] != "1" || len(hits) == 0 || hits[len(hits)-1] != "/"+name {
			t.Fatalf("fetch %s: %s matching rows, host saw %v", name, *res.Rows[0][0], hits)
		}
	}
	fetch("one")

	// The relay forgets the session (as after a restart); a URL it does not
	// know is refused with a clear error.
	srv.deleteSession(t, s1)
	bad := srv.url + "/relay/nosuchsession?token=x"
	bad = "ws" + strings.TrimPrefix(bad, "http")
	if err := v.SetRelay(ctx, bad); err == nil || !strings.Contains(err.Error(), "refused") || strings.Contains(err.Error(), "token=x") {
		t.Errorf("SetRelay to an unknown session: %v, want a refusal that does not show the token", err)
	}

	// A new session: the running VM moves to it, takes a lease, and its
	// traffic flows again.
	s2 := srv.session(t)
	start := time.Now()
	if err := v.SetRelay(ctx, s2.RelayURL); err != nil {
		t.Fatal(err)
	}
	t.Logf("SetRelay: open in %v", time.Since(start).Round(time.Millisecond))
	if st, err := v.Stats(ctx); err != nil || st.Relay != "open" {
		t.Fatalf("after SetRelay: relay %q, %v", st.Relay, err)
	}
	fetch("two")
}
