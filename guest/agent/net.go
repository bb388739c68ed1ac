package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

type netConfig struct {
	Interface string
	Udhcpc    string
	Script    string
	StateFile string
	Timeout   time.Duration
}

// netState is the "network" object of the protocol.
type netState struct {
	Up      bool     `json:"up"`
	Address string   `json:"address,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	// TLSCertSHA256 is the SHA-256 (hex) of the certificate net_up gave
	// PostgreSQL.
	TLSCertSHA256 string `json:"tls_cert_sha256,omitempty"`
}

// runner runs a command with extra environment variables and returns its
// combined output. Tests replace it: they must not touch the host's network.
type runner func(ctx context.Context, env []string, name string, args ...string) ([]byte, error)

func execRunner(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s failed: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// network configures the guest's interface with busybox udhcpc. The udhcpc
// script applies the lease and records it in a state file (its format is
// below), which is what status reports.
type network struct {
	cfg netConfig
	run runner
}

func newNetwork(cfg netConfig, run runner) *network {
	return &network{cfg: cfg, run: run}
}

// scriptEnv passes the state file to the udhcpc script, which inherits the
// environment of udhcpc.
func (n *network) scriptEnv() []string {
	return []string{"PGWASM_NET_STATE=" + n.cfg.StateFile}
}

func (n *network) up(ctx context.Context) (netState, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	if err := os.MkdirAll(filepath.Dir(n.cfg.StateFile), 0o755); err != nil {
		return netState{}, fmt.Errorf("cannot create network state directory: %w", err)
	}
	// A stale record would otherwise be reported if DHCP fails.
	if err := os.Remove(n.cfg.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return netState{}, fmt.Errorf("cannot remove old network state: %w", err)
	}
	// -f foreground, -q quit once bound, -n fail instead of retrying forever:
	// the page asks again if it wants to.
	_, err := n.run(ctx, n.scriptEnv(), n.cfg.Udhcpc,
		"-i", n.cfg.Interface, "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", n.cfg.Script)
	if err != nil {
		return netState{}, fmt.Errorf("DHCP on %s failed: %w", n.cfg.Interface, err)
	}
	st, err := readNetState(n.cfg.StateFile)
	if err != nil {
		return netState{}, err
	}
	if !st.Up {
		return st, fmt.Errorf("DHCP on %s finished but the udhcpc script recorded no address", n.cfg.Interface)
	}
	return st, nil
}

// down removes the address and default route by running the script's
// deconfig step, the same step udhcpc runs before it asks for a lease. The
// lease was taken with -q, so no udhcpc process is left to release it; the
// relay's lease simply expires.
func (n *network) down(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	env := append(n.scriptEnv(), "interface="+n.cfg.Interface)
	if _, err := n.run(ctx, env, n.cfg.Script, "deconfig"); err != nil {
		return fmt.Errorf("cannot take %s down: %w", n.cfg.Interface, err)
	}
	if err := os.Remove(n.cfg.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot remove network state: %w", err)
	}
	return nil
}

// state reports the last recorded lease; no record means the network is down.
func (n *network) state() netState {
	st, err := readNetState(n.cfg.StateFile)
	if err != nil {
		return netState{}
	}
	return st
}

// readNetState parses the state file written by guest/udhcpc.script: one
// key=value per line with keys ip, mask (prefix length), router and dns
// (space separated lists, as udhcpc gives them). Unknown keys are ignored.
func readNetState(path string) (netState, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return netState{}, nil
	}
	if err != nil {
		return netState{}, fmt.Errorf("cannot read network state: %w", err)
	}
	return parseNetState(data), nil
}

func parseNetState(data []byte) netState {
	var ip, mask string
	var st netState
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		switch k {
		case "ip":
			ip = v
		case "mask":
			mask = v
		case "router":
			if f := strings.Fields(v); len(f) > 0 {
				st.Gateway = f[0]
			}
		case "dns":
			st.DNS = strings.Fields(v)
		}
	}
	if ip == "" {
		return netState{}
	}
	st.Up = true
	st.Address = ip
	if mask != "" {
		st.Address += "/" + mask
	}
	return st
}
