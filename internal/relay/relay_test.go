package relay_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgwasm/pgwasm/internal/policy"
	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/testkit/simvm"
)

// env is one relay behind a real HTTP server on loopback, with a test DNS
// upstream and echo servers, all on 127.0.0.1.
type env struct {
	t       *testing.T
	m       *relay.Manager // replaced by restart; read it in the test goroutine only
	cur     atomic.Pointer[relay.Manager]
	cfg     relay.Config
	reg     *prometheus.Registry
	srv     *httptest.Server
	tcpEcho netip.AddrPort
	udpEcho netip.AddrPort
	denied  netip.AddrPort // a TCP echo on a port not in the allow-list
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RELAY_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startDNS(t testing.TB) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	answers := map[string]string{"allowed.test.": "127.0.0.1", "denied.test.": "127.0.0.2", "public.test.": "93.184.216.34"}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) {
		r := new(mdns.Msg)
		r.SetReply(q)
		if ip, ok := answers[strings.ToLower(q.Question[0].Name)]; ok && q.Question[0].Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR(q.Question[0].Name + " 60 IN A " + ip)
			r.Answer = append(r.Answer, rr)
		} else if !ok {
			r.Rcode = mdns.RcodeNameError
		}
		_ = w.WriteMsg(r)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func startTCPEcho(t testing.TB) netip.AddrPort {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

func startUDPEcho(t testing.TB) netip.AddrPort {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func newEnv(t testing.TB, mutate func(*relay.Config)) *env {
	tt, _ := t.(*testing.T)
	e := &env{t: tt, reg: prometheus.NewRegistry()}
	e.tcpEcho = startTCPEcho(t)
	e.udpEcho = startUDPEcho(t)
	e.denied = startTCPEcho(t)
	cfg := relay.DefaultConfig()
	cfg.DNSUpstreams = []string{startDNS(t)}
	pol, err := policy.Parse([]string{e.tcpEcho.String(), e.udpEcho.String(), "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Egress = pol
	cfg.BytesPerSecond = 0
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := relay.NewManager(cfg, testLogger(t), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	e.m, e.cfg = m, cfg
	e.cur.Store(m)
	mux := http.NewServeMux()
	mux.Handle("/relay/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { e.cur.Load().ServeHTTP(w, r) }))
	e.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		// Close the relay first: it ends the hijacked websockets that
		// httptest.Server.Close would otherwise wait for.
		e.cur.Load().Close()
		e.srv.Close()
	})
	return e
}

// restart closes the Manager (ending its sessions and websockets) and puts
// a new one with the same config, and fresh metrics, at the same URL: what
// a restart of `pgwasm serve` does.
func (e *env) restart(t testing.TB, mutate func(*relay.Config)) {
	t.Helper()
	e.cur.Load().Close()
	if mutate != nil {
		mutate(&e.cfg)
	}
	e.reg = prometheus.NewRegistry()
	m, err := relay.NewManager(e.cfg, testLogger(t), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	e.cur.Store(m)
}

func (e *env) wsURL(s *relay.Session) string {
	return "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/relay/" + s.ID() + "?token=" + s.Token()
}

// vm creates a session and a VM with a lease.
func (e *env) vm(ctx context.Context, t testing.TB) (*relay.Session, *simvm.VM) {
	t.Helper()
	s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := simvm.Dial(ctx, e.wsURL(s))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if _, err := vm.DHCP(ctx); err != nil {
		t.Fatal(err)
	}
	return s, vm
}

func echoOnce(ctx context.Context, c net.Conn, msg string) error {
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo = %q, want %q", got, msg+"\n")
	}
	return nil
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestDHCPLease(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 10*time.Second)
	s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := simvm.Dial(ctx, e.wsURL(s))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	l, err := vm.DHCP(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := simvm.Lease{
		Addr:    netip.MustParsePrefix("10.0.2.15/24"),
		Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS:     netip.MustParseAddr("10.0.2.2"),
		MTU:     9000, // the guest's on virtio-net
	}
	if l != want {
		t.Errorf("lease = %+v, want %+v", l, want)
	}
	if s.GuestAddr() != l.Addr.Addr() {
		t.Errorf("GuestAddr = %s, lease %s", s.GuestAddr(), l.Addr)
	}
}

func TestEgress(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 20*time.Second)
	_, vm := e.vm(ctx, t)

	t.Run("tcp allowed", func(t *testing.T) {
		c, err := vm.DialTCP(ctx, e.tcpEcho)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoOnce(ctx, c, "hello tcp"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("udp allowed", func(t *testing.T) {
		c, err := vm.DialUDP(ctx, e.udpEcho)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("hello udp")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "hello udp" {
			t.Fatalf("udp echo = %q, %v", buf[:n], err)
		}
	})
	t.Run("tcp denied by ip", func(t *testing.T) {
		for _, dst := range []netip.AddrPort{e.denied, netip.MustParseAddrPort("127.0.0.2:80"), netip.MustParseAddrPort("10.0.2.2:22"), netip.MustParseAddrPort("169.254.169.254:80")} {
			c, err := vm.DialTCP(ctx, dst)
			if err == nil {
				c.Close()
				t.Errorf("DialTCP(%s) succeeded, want refused", dst)
			}
		}
	})
	t.Run("udp denied", func(t *testing.T) {
		c, err := vm.DialUDP(ctx, netip.MustParseAddrPort("127.0.0.2:9"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Write([]byte("x"))
		if _, err := c.Read(make([]byte, 8)); err == nil {
			t.Fatal("read from denied UDP flow succeeded")
		}
	})
	t.Run("dns", func(t *testing.T) {
		got, err := vm.Resolve(ctx, "allowed.test")
		if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("Resolve(allowed.test) = %v, %v; want [127.0.0.1]", got, err)
		}
		_, err = vm.Resolve(ctx, "denied.test")
		var re *simvm.RcodeError
		if !errors.As(err, &re) || re.Rcode != mdns.RcodeRefused {
			t.Errorf("Resolve(denied.test) error = %v, want REFUSED", err)
		}
		_, err = vm.Resolve(ctx, "nosuch.test")
		if !errors.As(err, &re) || re.Rcode != mdns.RcodeNameError {
			t.Errorf("Resolve(nosuch.test) error = %v, want NXDOMAIN", err)
		}
	})
	if n := testutil.ToFloat64(mustVec(t, e.reg, "pgwasm_relay_refusals_total")); n < 5 {
		t.Errorf("refusals metric = %v, want >= 5", n)
	}
}

// mustVec sums every series of a metric family from the registry.
func mustVec(t testing.TB, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return sumCollector{reg: reg, name: name}
}

type sumCollector struct {
	reg  *prometheus.Registry
	name string
}

func (s sumCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- prometheus.NewDesc(s.name+"_sum_of_series", "test sum", nil, nil)
}

func (s sumCollector) Collect(ch chan<- prometheus.Metric) {
	fams, _ := s.reg.Gather()
	var sum float64
	for _, f := range fams {
		if f.GetName() != s.name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(s.name+"_sum_of_series", "test sum", nil, nil), prometheus.GaugeValue, sum)
}

func mustRule(t testing.TB, s string) policy.Rule {
	r, err := policy.ParseRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
