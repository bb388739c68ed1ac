// Package nat splices the flows a VM opens to real host sockets: each guest
// TCP connection becomes a host TCP connection to the same destination, and
// each guest UDP flow gets its own host UDP socket, closed after an idle
// time. Every destination passes the egress policy first. It never sees
// gVisor types: the caller hands it accept/reject functions.
package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgwasm/pgwasm/internal/policy"
)

// Refusal reasons besides the policy's own.
const (
	ReasonLocal     = "local-subnet"
	ReasonFlowLimit = "flow-limit"
	ReasonDial      = "dial-failed"
)

// Config configures a NAT.
type Config struct {
	Policy policy.Policy
	// Local is the VM's virtual subnet: destinations in it are never
	// forwarded to the host network, whatever the policy says.
	Local netip.Prefix
	// HostAlias, if valid, is an address in Local that stands for the
	// relay host's loopback (as 10.0.2.2 does in QEMU's slirp): flows to
	// HostAlias:PORT go to HostLoopback:PORT, and the policy decides on
	// HostLoopback:PORT, so an operator still has to allow-list each
	// port (e.g. 127.0.0.1:5432). The guest routes 127/8 to its own lo,
	// so without an alias it cannot reach the host at all.
	HostAlias netip.Addr
	// HostLoopback is where HostAlias leads. Default 127.0.0.1.
	HostLoopback netip.Addr
	// MaxTCP and MaxUDP bound concurrent flows. Zero means no limit.
	MaxTCP, MaxUDP int
	// DialTimeout bounds a host TCP dial. Default 10 s.
	DialTimeout time.Duration
	// UDPIdle closes a UDP flow with no traffic either way. Default 60 s.
	UDPIdle time.Duration
	// Dial opens host connections. Default (&net.Dialer{}).DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnRefused is told each refusal: proto "tcp"/"udp" and the reason.
	OnRefused func(proto, reason string)
	// OnFlow is told when a flow starts (+1) and ends (-1).
	OnFlow func(proto string, delta int)
}

// NAT forwards one VM's flows. Flows end when the context given to TCP/UDP
// ends; Wait waits for them.
type NAT struct {
	cfg      Config
	log      *slog.Logger
	tcpFlows atomic.Int64
	udpFlows atomic.Int64
	wg       sync.WaitGroup
}

// New makes a NAT.
func New(cfg Config, log *slog.Logger) *NAT {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.UDPIdle <= 0 {
		cfg.UDPIdle = 60 * time.Second
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if !cfg.HostLoopback.IsValid() {
		cfg.HostLoopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return &NAT{cfg: cfg, log: log}
}

// Flows returns the number of open TCP and UDP flows.
func (n *NAT) Flows() (tcp, udp int) {
	return int(n.tcpFlows.Load()), int(n.udpFlows.Load())
}

// Wait waits until every flow has ended.
func (n *NAT) Wait() { n.wg.Wait() }

func (n *NAT) refuse(proto, reason string, src, dst netip.AddrPort) {
	n.log.Debug("flow refused", "proto", proto, "src", src, "dst", dst, "reason", reason)
	if n.cfg.OnRefused != nil {
		n.cfg.OnRefused(proto, reason)
	}
}

func (n *NAT) flow(proto string, delta int) {
	if n.cfg.OnFlow != nil {
		n.cfg.OnFlow(proto, delta)
	}
}

// translate maps the host alias to the host's loopback; other destinations
// are returned as they are.
func (n *NAT) translate(dst netip.AddrPort) netip.AddrPort {
	if n.cfg.HostAlias.IsValid() && dst.Addr().Unmap() == n.cfg.HostAlias {
		return netip.AddrPortFrom(n.cfg.HostLoopback, dst.Port())
	}
	return dst
}

// check applies the subnet rule and the policy to a translated destination;
// it returns "" if allowed.
func (n *NAT) check(dst netip.AddrPort) string {
	a := dst.Addr().Unmap()
	if n.cfg.Local.IsValid() && n.cfg.Local.Contains(a) {
		return ReasonLocal
	}
	if d := n.cfg.Policy.Check(netip.AddrPortFrom(a, dst.Port())); !d.Allowed {
		return d.Reason
	}
	return ""
}

func acquire(c *atomic.Int64, limit int) bool {
	if c.Add(1) > int64(limit) && limit > 0 {
		c.Add(-1)
		return false
	}
	return true
}

// TCP forwards one guest TCP connection to dst. It dials the host side
// first, so a refused or unreachable destination reaches the guest as a
// RST, as it would on a real network. It blocks until the flow ends.
func (n *NAT) TCP(ctx context.Context, src, dst netip.AddrPort, accept func() (net.Conn, error), reject func()) {
	dst = n.translate(dst)
	if reason := n.check(dst); reason != "" {
		n.refuse("tcp", reason, src, dst)
		reject()
		return
	}
	if !acquire(&n.tcpFlows, n.cfg.MaxTCP) {
		n.refuse("tcp", ReasonFlowLimit, src, dst)
		reject()
		return
	}
	n.wg.Add(1)
	defer n.wg.Done()
	defer n.tcpFlows.Add(-1)

	dctx, cancel := context.WithTimeout(ctx, n.cfg.DialTimeout)
	host, err := n.cfg.Dial(dctx, "tcp", dst.String())
	cancel()
	if err != nil {
		n.log.Debug("tcp dial failed", "dst", dst, "err", err)
		if n.cfg.OnRefused != nil {
			n.cfg.OnRefused("tcp", ReasonDial)
		}
		reject()
		return
	}
	guest, err := accept()
	if err != nil {
		host.Close()
		n.log.Debug("cannot accept guest tcp", "err", err)
		return
	}
	n.flow("tcp", 1)
	defer n.flow("tcp", -1)
	splice(ctx, guest, host)
}

type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both directions end or ctx ends. A finished
// direction half-closes its destination so the peer sees EOF.
func splice(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	var wg sync.WaitGroup
	one := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go one(a, b)
	go one(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// UDP decides on the first datagram of a guest UDP flow. It must be called
// on the packet path: it calls accept before returning (the datagram is only
// valid until then), and returns false to refuse, which the stack turns into
// an ICMP port unreachable. The flow then runs on its own goroutine.
func (n *NAT) UDP(ctx context.Context, src, dst netip.AddrPort, accept func() (net.Conn, error)) bool {
	dst = n.translate(dst)
	if reason := n.check(dst); reason != "" {
		n.refuse("udp", reason, src, dst)
		return false
	}
	if !acquire(&n.udpFlows, n.cfg.MaxUDP) {
		n.refuse("udp", ReasonFlowLimit, src, dst)
		return false
	}
	guest, err := accept()
	if err != nil {
		n.udpFlows.Add(-1)
		n.log.Debug("cannot accept guest udp", "err", err)
		return true // the datagram is gone either way
	}
	n.wg.Add(1)
	n.flow("udp", 1)
	go func() {
		defer n.wg.Done()
		defer n.udpFlows.Add(-1)
		defer n.flow("udp", -1)
		defer guest.Close()
		// Connecting a UDP socket sends nothing, so this cannot block.
		host, err := n.cfg.Dial(ctx, "udp", dst.String())
		if err != nil {
			n.log.Debug("udp dial failed", "dst", dst, "err", err)
			return
		}
		spliceUDP(ctx, guest, host, n.cfg.UDPIdle)
	}()
	return true
}

// spliceUDP copies datagrams both ways until neither way has seen one for
// idle, or ctx ends.
func spliceUDP(ctx context.Context, guest, host net.Conn, idle time.Duration) {
	stop := context.AfterFunc(ctx, func() { guest.Close(); host.Close() })
	defer stop()
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	one := func(dst, src net.Conn) {
		defer wg.Done()
		defer guest.Close()
		defer host.Close()
		buf := make([]byte, 65535)
		for {
			_ = src.SetReadDeadline(time.Now().Add(idle))
			n, err := src.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() &&
					time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction is still busy
				}
				return
			}
			last.Store(time.Now().UnixNano())
			if _, err := dst.Write(buf[:n]); err != nil {
				// A host socket may see ICMP errors; keep going.
				var oe *net.OpError
				if errors.As(err, &oe) && !errors.Is(err, net.ErrClosed) {
					continue
				}
				return
			}
		}
	}
	wg.Add(2)
	go one(host, guest)
	go one(guest, host)
	wg.Wait()
}

// String describes the flow counts, for debugging.
func (n *NAT) String() string {
	t, u := n.Flows()
	return fmt.Sprintf("nat{tcp=%d udp=%d}", t, u)
}
