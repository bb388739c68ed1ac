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
// up behind the cluster, and simulated sessions on every replica. The VM's
// replica drains (SIGTERM); then the replica it moved to is killed
// (SIGKILL). Each
// time, within 15 s of the signal, the VM's relay is back on another
// replica, a DHCP renewal (the agent's net_up) gets the same address, and
// a new host psql through HAProxy's SNI front reads the rows written
// before. The simulated sessions of the surviving replicas keep their
// websockets and replicas throughout.
//
// HAProxy here checks every 2 s, much longer than the 100 ms drain delay,
// so the harness's first reconnect after the 4503 close still meets the
// draining replica (503): v86 alone would then wait its 10 s reconnect
// interval; the harness retries every 250 ms and is back as soon as
// HAProxy has moved the session. After a SIGKILL there is no close code:
// the websocket drops, and the harness retries every 250 ms in the same way
// (v86's own retry would come 10 s later).
func TestClusterRealVM(t *testing.T) {
	image := os.Getenv("PGWASM_IMAGE")
	if image == "" {
		t.Skip("PGWASM_IMAGE is not set: `make test-vm`-style runs give it the built image with its snapshot")
	}
	c := startCluster(t, 3, "2s", "100ms")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// Bystanders: simulated sessions, some on every replica (12 random
	// ids leave a replica empty with probability ~3 × (2/3)^12). Nothing
	// connects to their port 5432, so they need no PostgreSQL behind.
	type bystander struct {
		v      *simVM
		holder string
	}
	var bystanders []bystander
	for range 12 {
		s, err := c.createSession()
		if err != nil {
			t.Fatal(err)
		}
		v := c.startVM(ctx, s, "127.0.0.1:1")
		h := c.holders(s)
		if len(h) != 1 {
			t.Fatalf("simulated session held by %v, want one replica", h)
		}
		bystanders = append(bystanders, bystander{v, h[0]})
	}

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
	netUp := func() (string, error) {
		raw, err := v.Request(ctx, map[string]any{"op": "net_up"})
		if err != nil {
			return "", err
		}
		var r struct {
			Network struct {
				Address string `json:"address"`
			} `json:"network"`
		}
		json.Unmarshal(raw, &r)
		return r.Network.Address, nil
	}
	addr, err := netUp()
	if err != nil || addr == "" {
		t.Fatalf("net_up: %q, %v", addr, err)
	}
	const password = "cluster-test-password-1"
	if _, err := v.Request(ctx, map[string]any{"op": "set_password", "user": "postgres", "password": password}); err != nil {
		t.Fatalf("set_password: %v", err)
	}
	if _, err := v.Exec(ctx, "create table moved (x text); insert into moved values ('written before')"); err != nil {
		t.Fatal(err)
	}
	// query retries until until: right after net_up PostgreSQL reloads
	// its new TLS key, and right after a move the tunnel may meet the
	// replica before the VM's websocket has.
	query := func(until time.Time) (string, error) {
		for {
			got, err := c.query(ctx, s, password, "psql", "select x from moved")
			if err == nil || time.Now().After(until) {
				return got, err
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	if got, err := query(time.Now().Add(30 * time.Second)); got != "written before" {
		t.Fatalf("psql through HAProxy SNI before losing a replica: %q, %v", got, err)
	}

	dead := map[string]bool{}
	// lose signals the VM's replica and waits, within 15 s of the
	// signal, for the VM's relay on another replica, the same address,
	// and the rows through SNI.
	lose := func(sig syscall.Signal) {
		t.Helper()
		var victim *replica
		for _, r := range c.replicas {
			if r.name == holder[0] {
				victim = r
			}
		}
		signalled := time.Now()
		limit := signalled.Add(15 * time.Second)
		if err := victim.proc.Signal(sig); err != nil {
			t.Fatal(err)
		}
		dead[victim.name] = true
		for {
			if holder = c.holders(s); len(holder) == 1 && !dead[holder[0]] && relayOpen() {
				break
			}
			if time.Now().After(limit) {
				t.Fatalf("%v: VM not back within 15 s: holders %v, relay open %v", sig, holder, relayOpen())
			}
			time.Sleep(100 * time.Millisecond)
		}
		back := time.Since(signalled)
		// The new replica grants the guest's renewal of its address.
		a, err := netUp()
		if a != addr {
			t.Errorf("%v: address after the move %q (%v), want %s", sig, a, err, addr)
		}
		leased := time.Since(signalled)
		got, err := query(limit)
		if got != "written before" {
			t.Fatalf("%v: psql through HAProxy SNI after the move: %q, %v", sig, got, err)
		}
		total := time.Since(signalled)
		t.Logf("%v on %s: VM relay on %s after %v, DHCP address %s after %v, psql read the rows after %v",
			sig, victim.name, holder[0], back.Round(time.Millisecond), a, leased.Round(time.Millisecond), total.Round(time.Millisecond))
		if total > 15*time.Second {
			t.Errorf("%v: psql read the rows %v after the signal, want within 15 s", sig, total.Round(time.Millisecond))
		}
		for _, b := range bystanders {
			if dead[b.holder] {
				continue
			}
			if errs := b.v.closeErrors(); len(errs) > 0 {
				t.Errorf("%v: simulated session %s on %s lost its websocket: %v", sig, b.v.s.ID, b.holder, errs)
			}
			if h := c.holders(b.v.s); len(h) != 1 || h[0] != b.holder {
				t.Errorf("%v: simulated session %s moved from %s to %v", sig, b.v.s.ID, b.holder, h)
			}
		}
	}
	lose(syscall.SIGTERM)
	lose(syscall.SIGKILL)
}
