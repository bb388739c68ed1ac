package relay

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/pgwasm/pgwasm/internal/netstack"
	"github.com/pgwasm/pgwasm/internal/services/dhcp"
	"github.com/pgwasm/pgwasm/internal/services/dns"
	"github.com/pgwasm/pgwasm/internal/services/nat"
)

// Session is one VM's private network: a netstack with DHCP, DNS and NAT,
// reached through at most one websocket at a time.
type Session struct {
	id, token string
	client    netip.Addr
	cfg       *Config
	m         *Manager
	log       *slog.Logger
	created   time.Time
	ends      time.Time // the latest end: the token's expiry, capped by Config.Lifetime

	ctx    context.Context
	cancel context.CancelFunc
	st     *netstack.Stack
	dhcp   *dhcp.Server
	nat    *nat.NAT
	in     *rate.Limiter
	out    *rate.Limiter
	wg     sync.WaitGroup // service goroutines
	done   chan struct{}
	ended  atomic.Bool

	lastActive atomic.Int64 // unix nanoseconds of the last frame either way

	mu         sync.Mutex
	att        *attachment
	detachedAt time.Time
	guestMAC   net.HardwareAddr // learned from the current websocket's first frame

	stats sessionStats
}

type sessionStats struct {
	framesIn, framesOut, bytesIn, bytesOut atomic.Uint64
	dropped                                atomic.Uint64
	mu                                     sync.Mutex
	dropReasons                            map[string]uint64
}

// Stats is a snapshot of one session's counters.
type Stats struct {
	FramesIn, FramesOut uint64
	BytesIn, BytesOut   uint64
	Dropped             uint64
	DropReasons         map[string]uint64
	TCPFlows, UDPFlows  int
}

type attachment struct {
	conn   *websocket.Conn
	cork   *corkConn // nil if the websocket is not ours to cork
	cancel context.CancelFunc
	done   chan struct{} // closed when the writer has stopped
}

// drain closes the websocket with StatusDraining. The close frame must go
// out before the read side is cancelled: cancelling a read makes the
// websocket library drop the connection without one.
func (a *attachment) drain() {
	_ = a.conn.Close(StatusDraining, DrainReason)
	a.cancel()
}

func newID() string { return strings.ToLower(rand.Text()) }

// newSession builds session id, created at created and expiring at expires
// (both earlier than a new session's when it is re-created from its token).
func newSession(m *Manager, client netip.Addr, id string, created, expires time.Time) (*Session, error) {
	cfg := &m.cfg
	s := &Session{
		id:      id,
		token:   mintToken(m.secret, id, created, expires),
		client:  client,
		cfg:     cfg,
		m:       m,
		created: created,
		ends:    sessionEnd(created, expires, cfg.Lifetime),
		done:    make(chan struct{}),
	}
	s.log = m.log.With("session", s.id, "client", client)
	// Idle and grace periods run from now, the lifetime from created.
	now := time.Now()
	s.lastActive.Store(now.UnixNano())
	s.detachedAt = now
	s.stats.dropReasons = make(map[string]uint64)
	limit, burst := rate.Inf, 0
	if cfg.BytesPerSecond > 0 {
		limit, burst = rate.Limit(cfg.BytesPerSecond), cfg.BurstBytes
	}
	s.in = rate.NewLimiter(limit, burst)
	s.out = rate.NewLimiter(limit, burst)

	st, err := newSessionStack(cfg)
	if err != nil {
		return nil, err
	}
	s.st = st
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.startServices(); err != nil {
		s.cancel()
		st.Close()
		s.wg.Wait()
		return nil, err
	}
	s.startNAT()
	return s, nil
}

// newSessionStack makes the session's gateway side of the network.
func newSessionStack(cfg *Config) (*netstack.Stack, error) {
	var aliases []netip.Addr
	if cfg.HostAlias.IsValid() {
		aliases = append(aliases, cfg.HostAlias)
	}
	st, err := netstack.New(netstack.Config{
		Aliases:     aliases,
		MAC:         cfg.GatewayMAC,
		Addr:        netip.PrefixFrom(cfg.Gateway, cfg.Subnet.Bits()),
		Promiscuous: true,
		// One VM per network: no ARP cache (39 KB per session).
		PointToPoint: true,
		MTU:          uint32(cfg.MTU),
		TCPBuffer:    cfg.TCPBuffer,
	})
	if err != nil {
		return nil, fmt.Errorf("cannot create session network: %w", err)
	}
	return st, nil
}

// startServices runs DHCP and DNS on the gateway until s.ctx ends.
func (s *Session) startServices() error {
	cfg, m := s.cfg, s.m
	var err error
	s.dhcp, err = dhcp.New(dhcp.Config{
		ServerIP:  cfg.Gateway,
		Lease:     netip.PrefixFrom(cfg.Guest, cfg.Subnet.Bits()),
		Router:    cfg.Gateway,
		DNS:       []netip.Addr{cfg.Gateway},
		MTU:       cfg.MTU,
		LeaseTime: cfg.LeaseTime,
	}, s.log)
	if err != nil {
		return err
	}
	// One resolver per session, so one VM's queries cannot use up
	// another's concurrency.
	dnsSrv, err := dns.New(dns.Config{
		Upstreams: m.dnsUpstreams,
		Timeout:   5 * time.Second,
		Allow: func(a netip.Addr) (bool, string) {
			d := cfg.Egress.CheckAddr(a)
			return d.Allowed, d.Reason
		},
		OnRefused: func(reason string) { m.metrics.refusals.WithLabelValues("dns", reason).Inc() },
	}, s.log)
	if err != nil {
		return err
	}
	dhcpConn, err := s.st.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 67), true)
	if err != nil {
		return fmt.Errorf("cannot start DHCP: %w", err)
	}
	dnsConn, err := s.st.ListenUDP(netip.AddrPortFrom(cfg.Gateway, 53), false)
	if err != nil {
		dhcpConn.Close()
		return fmt.Errorf("cannot start DNS: %w", err)
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.dhcp.Serve(s.ctx, dhcpConn); err != nil {
			s.log.Debug("dhcp stopped", "err", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := dnsSrv.Serve(s.ctx, dnsConn); err != nil {
			s.log.Debug("dns stopped", "err", err)
		}
	}()
	return nil
}

// startNAT hands the guest's outgoing TCP and UDP flows to the NAT.
func (s *Session) startNAT() {
	cfg, m := s.cfg, s.m
	s.nat = nat.New(nat.Config{
		Policy:      cfg.Egress,
		Local:       cfg.Subnet,
		HostAlias:   cfg.HostAlias,
		MaxTCP:      cfg.MaxTCPFlows,
		MaxUDP:      cfg.MaxUDPFlows,
		DialTimeout: cfg.DialTimeout,
		UDPIdle:     cfg.UDPIdleTimeout,
		OnRefused: func(proto, reason string) {
			m.metrics.refusals.WithLabelValues(proto, reason).Inc()
		},
		OnFlow: func(proto string, delta int) {
			m.metrics.flows.WithLabelValues(proto).Add(float64(delta))
			if delta > 0 {
				m.metrics.flowsTotal.WithLabelValues(proto).Inc()
			}
		},
	}, s.log)
	gw := cfg.Gateway
	s.st.HandleTCP(func(r *netstack.TCPRequest) {
		if r.Dst.Addr() == gw {
			// The gateway offers no TCP services; never let it reach
			// the relay host's own ports.
			m.metrics.refusals.WithLabelValues("tcp", nat.ReasonLocal).Inc()
			r.Reject()
			return
		}
		s.nat.TCP(s.ctx, r.Src, r.Dst, r.Accept, r.Reject)
	})
	s.st.HandleUDP(func(r *netstack.UDPRequest) bool {
		if r.Src.Addr() == gw {
			// The stack loops its own broadcasts back in (the DHCP
			// server answers to 255.255.255.255), and no socket takes
			// them here. Not a VM flow: drop it without counting a
			// refusal (and without an ICMP error to ourselves). Frames
			// from the wire never carry the gateway as source: the
			// ingress filter drops them as spoofed-ip.
			return true
		}
		return s.nat.UDP(s.ctx, r.Src, r.Dst, r.Accept)
	})
}

// ID returns the session's public name: 26 lowercase letters and digits
// (130 random bits), usable as a DNS label.
func (s *Session) ID() string { return s.id }

// Token returns the secret that attaches a websocket to the session: its
// creation time signed with the Manager's secret (see token.go).
func (s *Session) Token() string { return s.token }

// GuestAddr returns the VM's address inside the session network.
func (s *Session) GuestAddr() netip.Addr { return s.cfg.Guest }

// ClientAddr returns the address of the HTTP client that created it.
func (s *Session) ClientAddr() netip.Addr { return s.client }

// ExpiresAt returns when the session ends at the latest: its creation time
// plus Config.Lifetime (of the server that made it, as its token says). It
// may end sooner: after Config.IdleTimeout without frames, Config.Grace
// without a websocket, or when deleted.
func (s *Session) ExpiresAt() time.Time { return s.ends }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// checkToken compares in constant time.
func (s *Session) checkToken(t string) bool {
	return subtle.ConstantTimeCompare([]byte(t), []byte(s.token)) == 1
}

// DialGuest opens a TCP connection from the gateway to the VM's port.
func (s *Session) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	if s.ended.Load() {
		return nil, ErrSessionEnded
	}
	return s.st.DialTCP(ctx, netip.AddrPortFrom(s.cfg.Guest, port))
}

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	st := Stats{
		FramesIn:    s.stats.framesIn.Load(),
		FramesOut:   s.stats.framesOut.Load(),
		BytesIn:     s.stats.bytesIn.Load(),
		BytesOut:    s.stats.bytesOut.Load(),
		Dropped:     s.stats.dropped.Load(),
		DropReasons: map[string]uint64{},
	}
	s.stats.mu.Lock()
	for k, v := range s.stats.dropReasons {
		st.DropReasons[k] = v
	}
	s.stats.mu.Unlock()
	st.TCPFlows, st.UDPFlows = s.nat.Flows()
	return st
}

// NetStats returns the counters of the session's network stack
// (retransmissions, timeouts, frames dropped on a full link queue).
func (s *Session) NetStats() netstack.Stats { return s.st.Stats() }

// Attached reports whether a websocket is attached now.
func (s *Session) Attached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.att != nil
}

func (s *Session) drop(reason string, frame []byte) {
	s.stats.dropped.Add(1)
	s.stats.mu.Lock()
	s.stats.dropReasons[reason]++
	s.stats.mu.Unlock()
	s.m.metrics.dropped.WithLabelValues(reason).Inc()
	// Never log the payload: it is the user's traffic.
	s.log.Debug("frame dropped", "reason", reason, "len", len(frame))
}

// InjectFrame is the ingress path: one Ethernet frame from the VM. It
// checks size, source MAC and source IP, then hands the frame to the stack.
// Any input is safe: bad frames are dropped and counted.
func (s *Session) InjectFrame(frame []byte) {
	if s.ended.Load() {
		s.drop(dropNotRunning, frame)
		return
	}
	if reason := s.filter(frame); reason != "" {
		s.drop(reason, frame)
		return
	}
	s.lastActive.Store(time.Now().UnixNano())
	s.stats.framesIn.Add(1)
	s.stats.bytesIn.Add(uint64(len(frame)))
	s.m.metrics.framesIn.Inc()
	s.m.metrics.bytesIn.Add(float64(len(frame)))
	s.st.InjectFrame(frame)
}

const (
	etherIPv4 = 0x0800
	etherARP  = 0x0806
)

// filter returns why frame must be dropped, or "".
func (s *Session) filter(frame []byte) string {
	if len(frame) < 14 {
		return dropRunt
	}
	if len(frame) > s.cfg.MaxFrameSize {
		return dropOversize
	}
	src := net.HardwareAddr(frame[6:12])
	if src[0]&1 == 1 || isZero(src) {
		return dropBadMAC // a multicast or zero source is never a real NIC
	}
	s.mu.Lock()
	switch {
	case s.guestMAC == nil:
		s.guestMAC = append(net.HardwareAddr(nil), src...)
		s.mu.Unlock()
		// A new MAC (e.g. v86 after a restore): resolve the guest anew.
		s.st.ForgetNeighbor(s.cfg.Guest)
	case string(s.guestMAC) != string(src):
		s.mu.Unlock()
		return dropSpoofMAC
	default:
		s.mu.Unlock()
	}
	payload := frame[14:]
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherIPv4:
		if len(payload) < 20 || payload[0]>>4 != 4 {
			return dropMalformed
		}
		ihl := int(payload[0]&0x0f) * 4
		if ihl < 20 || len(payload) < ihl {
			return dropMalformed
		}
		srcIP := netip.AddrFrom4([4]byte(payload[12:16]))
		if srcIP == s.cfg.Guest {
			return ""
		}
		// 0.0.0.0 only for DHCP: UDP to port 67.
		if srcIP.IsUnspecified() && payload[9] == 17 && len(payload) >= ihl+8 &&
			binary.BigEndian.Uint16(payload[ihl+2:ihl+4]) == 67 {
			return ""
		}
		return dropSpoofIP
	case etherARP:
		if len(payload) < 28 {
			return dropMalformed
		}
		// Ethernet/IPv4 ARP only; sender must be the guest (or 0.0.0.0
		// for an address probe) at the frame's own MAC.
		if binary.BigEndian.Uint16(payload[0:2]) != 1 || binary.BigEndian.Uint16(payload[2:4]) != etherIPv4 ||
			payload[4] != 6 || payload[5] != 4 {
			return dropMalformed
		}
		if string(payload[8:14]) != string(src) {
			return dropSpoofARP
		}
		spa := netip.AddrFrom4([4]byte(payload[14:18]))
		if spa != s.cfg.Guest && !spa.IsUnspecified() {
			return dropSpoofARP
		}
		return ""
	default:
		return dropEthertype
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// attach runs one websocket until it closes, is replaced, or the session
// ends. It blocks.
func (s *Session) attach(ctx context.Context, c *websocket.Conn, cork *corkConn) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	a := &attachment{conn: c, cork: cork, cancel: cancel, done: make(chan struct{})}

	s.mu.Lock()
	if s.ended.Load() {
		s.mu.Unlock()
		cancel()
		c.Close(websocket.StatusGoingAway, "session ended")
		return
	}
	if s.m.Draining() {
		// Drained between the lookup and here: send this one on too.
		s.mu.Unlock()
		cancel()
		c.Close(StatusDraining, DrainReason)
		return
	}
	old := s.att
	s.att = a
	s.guestMAC = nil // relearn: a restored VM may have a new MAC
	s.mu.Unlock()
	if old != nil {
		s.log.Info("websocket replaced")
		old.cancel()
		<-old.done
	} else {
		s.m.metrics.websockets.Inc()
	}
	s.log.Info("websocket attached")

	go s.writeLoop(ctx, a)
	err := s.readLoop(ctx, c)
	cancel()
	<-a.done

	s.mu.Lock()
	current := s.att == a
	if current {
		s.att = nil
		s.detachedAt = time.Now()
	}
	s.mu.Unlock()
	if current {
		s.m.metrics.websockets.Dec()
		s.log.Info("websocket detached", "err", err)
	}
	if s.ended.Load() {
		c.Close(websocket.StatusGoingAway, "session ended")
	} else if !current {
		c.Close(websocket.StatusPolicyViolation, "replaced by a newer connection")
	} else {
		c.CloseNow()
	}
}

// wsReadLimit is larger than any valid frame so that an oversized frame is
// dropped and counted, not a reason to kill the websocket; messages beyond
// it end the websocket (the session survives for the grace period).
const wsReadLimit = 64 << 10

func (s *Session) readLoop(ctx context.Context, c *websocket.Conn) error {
	c.SetReadLimit(wsReadLimit)
	for {
		typ, r, err := c.Reader(ctx)
		if err != nil {
			return err
		}
		// A frame buffer only once a message has come: an idle session
		// holds none (MaxFrameSize is 9 KB at MTU 9000).
		buf := s.m.frameBufs.Get().(*[]byte)
		err = s.readFrame(ctx, typ, r, *buf)
		s.m.frameBufs.Put(buf)
		if err != nil {
			return err
		}
	}
}

// readFrame reads one websocket message into buf (MaxFrameSize+1 bytes)
// and injects it, or drops it.
func (s *Session) readFrame(ctx context.Context, typ websocket.MessageType, r io.Reader, buf []byte) error {
	n, err := io.ReadFull(r, buf)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
	case err != nil:
		return err
	default:
		// Longer than MaxFrameSize: drain and drop.
		rest, err := io.Copy(io.Discard, r)
		if err != nil {
			return err
		}
		s.drop(dropOversize, make([]byte, 0, n+int(rest)))
		return nil
	}
	if typ != websocket.MessageBinary {
		s.drop(dropText, buf[:n])
		return nil
	}
	if s.cfg.BytesPerSecond > 0 {
		if err := s.in.WaitN(ctx, n); err != nil {
			return err
		}
	}
	s.InjectFrame(buf[:n])
	return nil
}

func (s *Session) writeLoop(ctx context.Context, a *attachment) {
	defer close(a.done)
	defer a.cancel() // a failed write ends the read side too
	// While this loop drains the stack, a full queue slows TCP down
	// instead of dropping frames (issue #13, item 9); without it,
	// nothing would make room.
	s.st.SetBackpressure(true)
	defer s.st.SetBackpressure(false)
	if a.cork != nil {
		defer a.cork.uncork()
	}
	// Sized for an MTU 1500 frame: an idle session waits in AppendFrame
	// holding it; the first larger frame grows it for good.
	buf := make([]byte, 0, min(s.cfg.MaxFrameSize, 1514+8))
	for {
		frame, err := s.st.AppendFrame(ctx, buf[:0])
		if err != nil {
			return
		}
		buf = frame
		if s.cfg.BytesPerSecond > 0 {
			if err := s.out.WaitN(ctx, len(frame)); err != nil {
				return
			}
		}
		// While more frames wait, let their websocket messages pile up
		// and leave in one write; flush when the queue is empty, so no
		// frame waits for one that isn't coming.
		more := a.cork != nil && s.st.Queued() > 0
		if more {
			a.cork.cork()
		}
		err = a.conn.Write(ctx, websocket.MessageBinary, frame)
		if err == nil && a.cork != nil && !more {
			err = a.cork.uncork()
		}
		if err != nil {
			s.log.Debug("websocket write failed", "err", err)
			return
		}
		s.lastActive.Store(time.Now().UnixNano())
		s.stats.framesOut.Add(1)
		s.stats.bytesOut.Add(uint64(len(frame)))
		s.m.metrics.framesOut.Inc()
		s.m.metrics.bytesOut.Add(float64(len(frame)))
	}
}

// end stops the session once; it waits for its goroutines.
func (s *Session) end(reason string) {
	if !s.ended.CompareAndSwap(false, true) {
		<-s.done
		return
	}
	s.log.Info("session ended", "reason", reason)
	s.cancel()
	s.mu.Lock()
	a := s.att
	s.mu.Unlock()
	if a != nil {
		<-a.done
	}
	s.dhcp.Release()
	s.st.Close()
	s.wg.Wait()
	s.nat.Wait()
	s.m.forget(s, reason)
	close(s.done)
}

// expired returns why the session should end now, or "".
func (s *Session) expired(now time.Time) string {
	if now.After(s.ends) {
		return "lifetime"
	}
	if now.Sub(time.Unix(0, s.lastActive.Load())) > s.cfg.IdleTimeout {
		return "idle"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.att == nil && now.Sub(s.detachedAt) > s.cfg.Grace {
		return "grace-expired"
	}
	return ""
}

// ErrSessionEnded is returned for operations on an ended session.
var ErrSessionEnded = errors.New("relay session ended")
