package cluster_test

import (
	"context"
	"encoding/json"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/vm"
)

// TestClusterRealVM: a real VM (v86 in the Node harness) with its network
// up behind the cluster; its replica drains. HAProxy here checks every 2 s,
// much longer than the 100 ms drain delay, so the harness's first reconnect after
// the 4503 close still meets the draining replica (503): v86 alone would
// then wait its 10 s reconnect interval; the harness retries every 250 ms
// and is back as soon as HAProxy has moved the session. The guest keeps its
// address, and host psql through SNI sees the data written before.
func TestClusterRealVM(t *testing.T) {
	image := os.Getenv("PGWASM_IMAGE")
	if image == "" {
		t.Skip("PGWASM_IMAGE is not set: `make test-vm`-style runs give it the built image with its snapshot")
	}
	c := startCluster(t, 3, "2s", "100ms")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	s, err := c.createSession()
	if err != nil {
		t.Fatal(err)
	}
	v, err := vm.Start(ctx, vm.Options{ImageDir: image, RelayURL: s.RelayURL})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	relayOpen := func() bool {
		st, err := v.Stats(ctx)
		return err == nil && st.Relay == "open"
	}
	var holder []string
	for deadline := time.Now().Add(30 * time.Second); ; {
		if holder = c.holders(s); len(holder) == 1 && relayOpen() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay websocket not attached through HAProxy: holders %v", holder)
		}
		time.Sleep(200 * time.Millisecond)
	}
	netUp := func() string {
		t.Helper()
		raw, err := v.Request(ctx, map[string]any{"op": "net_up"})
		if err != nil {
			t.Fatalf("net_up: %v", err)
		}
		var r struct {
			Network struct {
				Address string `json:"address"`
			} `json:"network"`
		}
		json.Unmarshal(raw, &r)
		if r.Network.Address == "" {
			t.Fatalf("net_up: no address in %s", raw)
		}
		return r.Network.Address
	}
	addr := netUp()
	const password = "cluster-test-password-1"
	if _, err := v.Request(ctx, map[string]any{"op": "set_password", "user": "postgres", "password": password}); err != nil {
		t.Fatalf("set_password: %v", err)
	}
	if _, err := v.Exec(ctx, "create table moved (x text); insert into moved values ('written before')"); err != nil {
		t.Fatal(err)
	}
	query := func(client string) (string, error) {
		return c.query(ctx, s, password, client, "select x from moved")
	}
	// net_up gives PostgreSQL a new TLS key and reloads it: the first
	// connections may meet the reload.
	var got string
	for deadline := time.Now().Add(30 * time.Second); ; {
		got, err = query("psql")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got != "written before" {
		t.Fatalf("psql through HAProxy SNI before the drain: %q, %v", got, err)
	}

	var victim *replica
	for _, r := range c.replicas {
		if r.name == holder[0] {
			victim = r
		}
	}
	signalled := time.Now()
	if err := victim.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var now []string
	for {
		if now = c.holders(s); len(now) == 1 && now[0] != victim.name && relayOpen() {
			break
		}
		if time.Since(signalled) > 8*time.Second {
			t.Fatalf("VM not back within 8 s of SIGTERM (v86's own retry would take 10 s): holders %v, relay open %v", now, relayOpen())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("VM moved from %s to %s %v after SIGTERM", victim.name, now[0], time.Since(signalled).Round(time.Millisecond))
	if a := netUp(); a != addr {
		t.Errorf("address after the move %s, want %s", a, addr)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		got, err = query("psql")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got != "written before" {
		t.Errorf("psql through HAProxy SNI after the move: %q, %v", got, err)
	}
}
