package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// sink is a host TCP server the VM uploads to: it reads exactly want bytes
// per connection (then closes, so busybox nc in the guest exits) and records
// progress; GET on its HTTP side serves n zero bytes for download tests.
type sink struct {
	tcpPort, httpPort int

	mu       sync.Mutex
	received int64
	first    time.Time
	last     time.Time
}

func startSink(t *testing.T) *sink {
	t.Helper()
	s := &sink{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s.tcpPort = ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.httpPort = hl.Addr().(*net.TCPAddr).Port
	mux := http.NewServeMux()
	mux.HandleFunc("GET /zero/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.PathValue("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.CopyN(w, zeroReader{}, n)
	})
	mux.HandleFunc("POST /up", func(w http.ResponseWriter, r *http.Request) {
		n, err := s.count(r.Body, -1)
		fmt.Fprintf(w, "stored %d %v\n", n, err)
	})
	hs := &http.Server{Handler: mux}
	go hs.Serve(hl)
	t.Cleanup(func() { hs.Close() })
	return s
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func (s *sink) reset() {
	s.mu.Lock()
	s.received, s.first, s.last = 0, time.Time{}, time.Time{}
	s.mu.Unlock()
}

func (s *sink) snapshot() (int64, time.Time, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received, s.first, s.last
}

// count reads r (up to want bytes when want >= 0).
func (s *sink) count(r io.Reader, want int64) (int64, error) {
	buf := make([]byte, 64<<10)
	var n int64
	for want < 0 || n < want {
		m, err := r.Read(buf)
		if m > 0 {
			n += int64(m)
			now := time.Now()
			s.mu.Lock()
			if s.first.IsZero() {
				s.first = now
			}
			s.received += int64(m)
			s.last = now
			s.mu.Unlock()
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (s *sink) serve(c net.Conn) {
	defer c.Close()
	// The first line is the byte count the guest will send.
	var hdr [32]byte
	i := 0
	for i < len(hdr) {
		if _, err := c.Read(hdr[i : i+1]); err != nil {
			return
		}
		if hdr[i] == '\n' {
			break
		}
		i++
	}
	want, _ := strconv.ParseInt(strings.TrimSpace(string(hdr[:i])), 10, 64)
	s.count(c, want)
}

// TestUploads is the regression test for the upload stall (docs/scenarios.md,
// "Other findings"): 5 MB uploads from the VM through the relay, one of them
// while another guest process writes to 9p (before the fix in
// guest/initramfs-init this stalled within seconds, for good, with NETDEV
// WATCHDOG messages), plus a download, each with its throughput.
// PGWASM_UPLOAD_MB sets the size; PGWASM_UPLOAD_PGBENCH=N adds pgbench
// through the port tunnel, 4 clients for N seconds each select-only and
// tpcb-like (1 means 60 s).
func TestUploads(t *testing.T) {
	mb := 5
	if v, err := strconv.Atoi(os.Getenv("PGWASM_UPLOAD_MB")); err == nil {
		mb = v
	}
	n := int64(mb) << 20
	ctx := testCtx(t, 15*time.Minute)
	sk := startSink(t)
	srv := startServer(t, sk.tcpPort, sk.httpPort)
	se := srv.createSession(t)
	g := startVM(ctx, t, se.RelayURL, "")

	var pic struct {
		Master struct {
			ISR  int `json:"isr"`
			ELCR int `json:"elcr"`
		} `json:"pic_master"`
	}
	picState := func() string {
		raw, err := g.HarnessCall(ctx, "irq_debug")
		if err != nil {
			t.Fatalf("irq_debug: %v", err)
		}
		if err := json.Unmarshal(raw, &pic); err != nil {
			t.Fatalf("irq_debug: %v: %s", err, raw)
		}
		return string(raw)
	}
	if st := picState(); pic.Master.ELCR&4 == 0 {
		t.Errorf("the guest did not set the master ELCR's IRQ 2 bit (guest/initramfs-init): %s", st)
	}
	// eth0 has the MTU the NIC offered at the snapshot's boot.
	image, _ := paths(t)
	m, err := manifest.Read(image)
	if err != nil {
		t.Fatal(err)
	}
	wantMTU := 1500
	if m.NetDevice == "virtio" && m.NetMTU > 0 {
		wantMTU = m.NetMTU
	}
	if out, err := g.program(ctx, "cat /sys/class/net/eth0/mtu"); err != nil || len(out) != 1 || out[0] != strconv.Itoa(wantMTU) {
		t.Errorf("eth0 MTU %q (%v), want %d (net_device %s)", out, err, wantMTU, m.NetDevice)
	}
	// txTimeouts counts NETDEV WATCHDOG timeouts per transmit queue, kept
	// by the kernel for any driver (ne2k-pci adds them to tx_errors,
	// virtio_net does not).
	txTimeouts := func() int {
		out, err := g.program(ctx, "cat /sys/class/net/eth0/queues/tx-*/tx_timeout")
		if err != nil || len(out) == 0 {
			t.Fatalf("tx_timeout: %v %q", err, out)
		}
		sum := 0
		for _, l := range out {
			v, err := strconv.Atoi(l)
			if err != nil {
				t.Fatalf("tx_timeout: %q", out)
			}
			sum += v
		}
		return sum
	}
	hostNC := fmt.Sprintf("%s %d", HostAlias, sk.tcpPort)
	const limit = 120 // seconds for one transfer (about 5 s expected)

	// guestRun runs a shell command in the VM under timeout and reports what
	// the sink received meanwhile.
	guestRun := func(name, cmd string, want int64) {
		t.Helper()
		sk.reset()
		before := txTimeouts()
		t0 := time.Now()
		pctx, cancel := context.WithTimeout(ctx, (limit+60)*time.Second)
		out, err := g.program(pctx, fmt.Sprintf("timeout %d sh -c '%s' 2>&1; echo exit=$?", limit, cmd))
		cancel()
		got, _, last := sk.snapshot()
		d := last.Sub(t0)
		t.Logf("upload %s: %d of %d bytes in %s: %.2f MB/s (%q)", name, got, want, d.Round(time.Millisecond),
			float64(got)/d.Seconds()/(1<<20), out)
		if err != nil || got != want {
			t.Errorf("upload %s: the host received %d of %d bytes (%v); PIC: %s", name, got, want, err, picState())
		}
		if after := txTimeouts(); after != before {
			t.Errorf("upload %s: %d transmit timeouts (NETDEV WATCHDOG) in the guest", name, after-before)
		}
	}

	// A download into the VM (to /dev/null: no 9p writes).
	t0 := time.Now()
	out, err := g.program(ctx, fmt.Sprintf("wget -q -O /dev/null http://%s:%d/zero/%d 2>&1; echo exit=$?", HostAlias, sk.httpPort, n))
	d := time.Since(t0)
	t.Logf("download: %d bytes in %s: %.2f MB/s (%q)", n, d.Round(time.Millisecond), float64(n)/d.Seconds()/(1<<20), out)
	if err != nil || len(out) != 1 || out[0] != "exit=0" {
		t.Errorf("download: %v %q", err, out)
	}

	// Source not on 9p: /dev/zero into busybox nc (the sink closes after n bytes).
	guestRun("/dev/zero | nc", fmt.Sprintf("(echo %d; head -c %d /dev/zero) | nc %s", n, n, hostNC), n)
	// The same while another process writes and syncs a file on 9p: IRQ 10
	// is shared by the NIC and the 9p device.
	guestRun("/dev/zero | nc, 9p writes alongside", fmt.Sprintf("rm -f /tmp/stop; "+
		"(i=0; while [ $i -lt 300 ] && [ ! -e /tmp/stop ]; do dd if=/dev/zero of=/var/lib/postgresql/junk bs=64k count=16; sync; i=$((i+1)); done) >/dev/null 2>&1 & "+
		"(echo %d; head -c %d /dev/zero) | nc %s; touch /tmp/stop", n, n, hostNC), n)
	// wget --post-file of a 9p file the guest never read (text: busybox wget
	// sends strlen(data) as Content-Length).
	path := fmt.Sprintf("/var/lib/postgresql/upload-%d.txt", time.Now().UnixNano())
	if err := g.WriteFile(ctx, path, textData(n)); err != nil {
		t.Fatal(err)
	}
	guestRun("wget --post-file (9p)", fmt.Sprintf("wget -q -O - --post-file=%s http://%s:%d/up; rm -f %s", path, HostAlias, sk.httpPort, path), n)

	if v := os.Getenv("PGWASM_UPLOAD_PGBENCH"); v != "" {
		secs, err := strconv.Atoi(v)
		if err != nil || secs < 1 {
			t.Fatalf("PGWASM_UPLOAD_PGBENCH=%q: want a number of seconds", v)
		}
		if secs == 1 {
			secs = 60
		}
		conn := g.portConn(se, "")
		pgbench := filepath.Join(pgtest.BinDir(), "pgbench")
		run(ctx, t, pgbench, "-i", "-s", "1", "-q", conn)
		for _, mode := range []struct{ name, flag string }{{"select-only", "-S"}, {"tpcb-like", ""}} {
			args := []string{"-n", "-c", "4", "-j", "4", "-T", strconv.Itoa(secs)}
			if mode.flag != "" {
				args = append(args, mode.flag)
			}
			before := txTimeouts()
			out := run(ctx, t, pgbench, append(args, conn)...)
			t.Logf("pgbench %s %s:\n%s", mode.name, strings.Join(args, " "), tail(out, 4))
			if after := txTimeouts(); after != before {
				t.Errorf("pgbench %s: %d transmit timeouts in the guest", mode.name, after-before)
			}
		}
	}
}

// textData is n bytes of random printable lines (no NUL bytes).
func textData(n int64) []byte {
	raw := make([]byte, n)
	rand.Read(raw)
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+/"
	for i := range raw {
		if i%77 == 76 {
			raw[i] = '\n'
		} else {
			raw[i] = alphabet[raw[i]&63]
		}
	}
	return raw
}
