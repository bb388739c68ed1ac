package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseNetState(t *testing.T) {
	tests := []struct {
		in   string
		want netState
	}{
		{"", netState{}},
		{"ip=\nmask=24\n", netState{}},
		{"ip=10.0.2.15\nmask=24\nrouter=10.0.2.2 10.0.2.3\ndns=10.0.2.3 1.1.1.1\ninterface=eth0\n",
			netState{Up: true, Address: "10.0.2.15/24", Gateway: "10.0.2.2", DNS: []string{"10.0.2.3", "1.1.1.1"}}},
		{"ip=10.0.2.15\ngarbage\n=x\n", netState{Up: true, Address: "10.0.2.15"}},
	}
	for _, tt := range tests {
		if got := parseNetState([]byte(tt.in)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseNetState(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

// TestNetUpDown runs the real guest/udhcpc.script under /bin/sh, the way
// udhcpc would, with a fake `ip` on PATH that logs its arguments. Neither
// udhcpc nor the host's interfaces are touched: the real DHCP exchange is
// tested by booting the VM against the relay (test/vm).
func TestNetUpDown(t *testing.T) {
	script, err := filepath.Abs("../udhcpc.script")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	ipLog := filepath.Join(bin, "ip.log")
	fakeIP := "#!/bin/sh\necho \"ip $*\" >> " + ipLog + "\n"
	if err := os.WriteFile(filepath.Join(bin, "ip"), []byte(fakeIP), 0o755); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(bin, "resolv.conf")

	env := &testEnv{}
	lease := []string{"interface=eth0", "ip=10.0.2.15", "mask=24", "router=10.0.2.2", "dns=10.0.2.3 10.0.2.4", "domain=pgwasm.internal"}
	env.onRun = func(ctx context.Context, e []string, name string, args ...string) ([]byte, error) {
		var stages []string
		switch name {
		case "/bin/udhcpc":
			stages = []string{"deconfig", "bound"}
		case "/usr/lib/pgwasm/udhcpc.script":
			stages = args
		default:
			return nil, errors.New("unexpected command " + name)
		}
		for _, stage := range stages {
			cmd := exec.CommandContext(ctx, "/bin/sh", script, stage)
			cmd.Env = append([]string{"PATH=" + bin + ":/usr/bin:/bin", "PGWASM_RESOLV_CONF=" + resolv, "interface=eth0"}, e...)
			if stage == "bound" {
				cmd.Env = append(cmd.Env, lease...)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				return out, err
			}
		}
		return nil, nil
	}
	a := startAgent(t, newTestServer(t, &fakeDB{}, env))

	resp := mustOK(t, a.call(map[string]any{"id": 1, "op": "net_up"}))
	wantNet := `{"address":"10.0.2.15/24","dns":["10.0.2.3","10.0.2.4"],"gateway":"10.0.2.2","up":true}`
	if got := jsonOf(t, resp["network"]); got != wantNet {
		t.Errorf("net_up network = %s, want %s", got, wantNet)
	}
	wantCmd := []string{"/bin/udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", "/usr/lib/pgwasm/udhcpc.script"}
	if len(env.commands) != 1 || !reflect.DeepEqual(env.commands[0], wantCmd) {
		t.Errorf("commands = %q, want %q", env.commands, wantCmd)
	}
	if got := jsonOf(t, mustOK(t, a.call(map[string]any{"id": 2, "op": "status"}))["network"]); got != wantNet {
		t.Errorf("status network = %s, want %s", got, wantNet)
	}
	if b, _ := os.ReadFile(resolv); string(b) != "search pgwasm.internal\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n" {
		t.Errorf("resolv.conf = %q", b)
	}

	mustOK(t, a.call(map[string]any{"id": 3, "op": "net_down"}))
	if got := jsonOf(t, mustOK(t, a.call(map[string]any{"id": 4, "op": "status"}))["network"]); got != `{"up":false}` {
		t.Errorf("status network after net_down = %s", got)
	}
	b, err := os.ReadFile(ipLog)
	if err != nil {
		t.Fatal(err)
	}
	wantIP := strings.Join([]string{
		"ip addr flush dev eth0", "ip route flush dev eth0", "ip link set eth0 up", // deconfig
		"ip addr flush dev eth0", "ip addr add 10.0.2.15/24 dev eth0", "ip link set eth0 up", "ip route add default via 10.0.2.2 dev eth0", // bound
		"ip addr flush dev eth0", "ip route flush dev eth0", "ip link set eth0 up", // net_down
	}, "\n") + "\n"
	if string(b) != wantIP {
		t.Errorf("ip commands:\n%s\nwant:\n%s", b, wantIP)
	}

	t.Run("DHCP failure", func(t *testing.T) {
		env.onRun = func(context.Context, []string, string, ...string) ([]byte, error) {
			return nil, errors.New("udhcpc: no lease, failing")
		}
		resp := a.call(map[string]any{"id": 5, "op": "net_up"})
		if resp["ok"] != false || !strings.Contains(resp["error"].(string), "no lease") {
			t.Errorf("net_up = %v, want the udhcpc failure", resp)
		}
	})
	t.Run("script recorded nothing", func(t *testing.T) {
		env.onRun = func(context.Context, []string, string, ...string) ([]byte, error) { return nil, nil }
		resp := a.call(map[string]any{"id": 6, "op": "net_up"})
		if resp["ok"] != false || !strings.Contains(resp["error"].(string), "recorded no address") {
			t.Errorf("net_up = %v, want a missing-lease error", resp)
		}
	})
}
