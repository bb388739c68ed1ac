// Package netstack is the only package that touches gVisor's tcpip/stack. It
// builds one user-space TCP/IP stack with one Ethernet NIC whose frames go in
// through InjectFrame and come out of ReadFrame, and adapts gVisor's types to
// the standard library's net.Conn, net.PacketConn and net.Listener.
//
// The relay uses it in gateway mode (promiscuous: it terminates every flow the
// guest opens, so NAT can splice it to a host socket); the simulated VM in
// tests uses it in host mode (an ordinary host with one address).
package netstack

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	randv2 "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const nicID tcpip.NICID = 1

// Config describes one stack.
type Config struct {
	// MAC is the NIC's own Ethernet address.
	MAC net.HardwareAddr
	// Addr is the stack's own address and on-link subnet. It may be left
	// zero and set later with SetAddress (a DHCP client does that).
	Addr netip.Prefix
	// Gateway, if valid, becomes the default route (host mode).
	Gateway netip.Addr
	// Promiscuous makes the stack accept packets for any destination and
	// answer from any source, so TCP/UDP handlers see every flow (gateway
	// mode).
	Promiscuous bool
	// MTU is the IP MTU; the Ethernet frame is 14 bytes larger. Default 1500.
	MTU uint32
	// QueueLen is the number of outbound frames held for ReadFrame. A
	// full queue makes senders wait while SetBackpressure is on and
	// drops frames while it is off (e.g. while the websocket is
	// reconnecting; v86 itself queues 128 frames then, we match that).
	// Default 128.
	QueueLen int
	// TCPBuffer sets TCP send and receive buffer sizes. Zero fields take
	// DefaultTCPBuffer's.
	TCPBuffer BufferSizes
	// MaxInFlightSYN bounds half-open forwarded TCP connections. Default 64.
	MaxInFlightSYN int
	// PointToPoint says the link has exactly one other host (the relay's
	// one VM): every outbound frame goes to the MAC address that last sent
	// a frame (broadcast until one has), and the stack keeps no ARP cache.
	// ARP requests from the peer are still answered.
	PointToPoint bool
	// Aliases are extra IPv4 addresses the stack owns besides Addr: it
	// answers ARP for them, so on-link peers can reach them (the relay's
	// host alias). Traffic to them reaches the TCP/UDP handlers as any
	// other flow does.
	Aliases []netip.Addr
}

// BufferSizes is the min/default/max TCP buffer size per direction.
type BufferSizes struct {
	Min, Default, Max int
}

// DefaultTCPBuffer is much lower than gVisor's 1 MiB default and 4 MiB max.
// Buffers are allocated as data arrives, so an idle connection costs little
// either way, but a busy one may fill its buffer: with thousands of sessions
// times many flows, 1 MiB each would be gigabytes. 64 KiB by default covers
// a bandwidth-delay product of 100 MB/s at 0.6 ms (the loopback/LAN case)
// and 10 MB/s at 6 ms. Receive auto-tuning (TCPModerateReceiveBufferOption)
// stays off: tried for issue #3, windows grown toward Max overflowed the
// 128-frame link queue and one loopback download fell to 2 MB/s.
var DefaultTCPBuffer = BufferSizes{Min: 4 << 10, Default: 64 << 10, Max: 512 << 10}

// Stack is one user-space TCP/IP stack with one Ethernet NIC.
type Stack struct {
	s    *stack.Stack
	link *channel.Endpoint
	mac  tcpip.LinkAddress

	// p2p and peer implement Config.PointToPoint: peer holds the MAC
	// address of the last injected frame's sender.
	p2p  bool
	peer atomic.Pointer[[6]byte]

	// out holds outbound frames for ReadFrame; see queue.go.
	out *outQueue

	mu   sync.Mutex
	addr netip.Prefix

	closeOnce sync.Once
}

// ErrClosed is returned by ReadFrame after Close.
var ErrClosed = errors.New("netstack closed")

// New makes a stack. Close it when done.
func New(cfg Config) (*Stack, error) {
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("cannot create stack: MAC %q is not 6 bytes", cfg.MAC)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if cfg.MTU < 576 || cfg.MTU > 9000 {
		return nil, fmt.Errorf("cannot create stack: MTU %d out of range [576, 9000]", cfg.MTU)
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 128
	}
	if cfg.MaxInFlightSYN <= 0 {
		cfg.MaxInFlightSYN = 64
	}
	buf := cfg.TCPBuffer
	if buf.Min == 0 {
		buf.Min = DefaultTCPBuffer.Min
	}
	if buf.Default == 0 {
		buf.Default = DefaultTCPBuffer.Default
	}
	if buf.Max == 0 {
		buf.Max = DefaultTCPBuffer.Max
	}
	if buf.Min > buf.Default || buf.Default > buf.Max {
		return nil, fmt.Errorf("cannot create stack: TCP buffer sizes %+v not ordered", buf)
	}

	s := stack.New(stack.Options{
		// IPv4 only: the guest network is 10.0.2.0/24 and the relay
		// offers no IPv6 (v86 guests get no RA); ARP for the Ethernet link.
		//
		// Loopback destinations are let in ("martians" to gVisor): the
		// egress policy, not the stack, decides, and operators may
		// allow-list e.g. 127.0.0.1:5432 on the relay host.
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true}),
			arp.NewProtocol,
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
		// HandleLocal off: packets to the stack's own address must come
		// from the wire, never loop inside the relay.
		HandleLocal: false,
		// gVisor's default rules accept everything but cost 8 KB per
		// stack (issue #3: memory per idle session). An empty table set
		// is never "modified", so every check passes at once, as with
		// the defaults.
		IPTables: new(stack.IPTables),
		// The default source is math/rand's 4.9 KB lagged Fibonacci
		// generator per stack (issue #3). This RNG only picks ephemeral
		// ports and jitter; sequence numbers come from SecureRNG.
		RandSource: newSmallRand(),
	})
	st := &Stack{s: s, mac: tcpip.LinkAddress(cfg.MAC), p2p: cfg.PointToPoint}
	fail := func(step string, e tcpip.Error) (*Stack, error) {
		s.Close()
		s.Wait()
		return nil, fmt.Errorf("cannot %s: %w", step, goError(e))
	}

	// SACK helps throughput on lossy paths (frames are dropped when the
	// queue is full or the bandwidth limit bites).
	sack := tcpip.TCPSACKEnabled(true)
	if e := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); e != nil {
		return fail("enable SACK", e)
	}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: buf.Min, Default: buf.Default, Max: buf.Max}
	if e := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); e != nil {
		return fail("set TCP receive buffer", e)
	}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: buf.Min, Default: buf.Default, Max: buf.Max}
	if e := s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); e != nil {
		return fail("set TCP send buffer", e)
	}

	// The channel endpoint carries whole Ethernet frames in (the
	// ethernet wrapper adds and strips the 14-byte header); outbound
	// frames stop in the queue above it, so its own queue stays empty.
	st.link = channel.New(1, cfg.MTU+header.EthernetMinimumSize, st.mac)
	st.out = newOutQueue(st.link, cfg.QueueLen)
	var ep stack.LinkEndpoint = ethernet.New(st.out)
	if cfg.PointToPoint {
		ep = newP2PLink(ep)
	}
	if e := s.CreateNIC(nicID, ep); e != nil {
		return fail("create NIC", e)
	}
	if cfg.Promiscuous {
		// Accept packets to any address so the forwarders see flows
		// to the internet, and let forwarded endpoints answer from
		// those addresses (spoofing) as a NAT router does.
		if e := s.SetPromiscuousMode(nicID, true); e != nil {
			return fail("set promiscuous mode", e)
		}
		if e := s.SetSpoofing(nicID, true); e != nil {
			return fail("set spoofing", e)
		}
	}
	if cfg.Addr.IsValid() {
		if err := st.SetAddress(cfg.Addr, cfg.Gateway); err != nil {
			s.Close()
			s.Wait()
			return nil, err
		}
	}
	for _, a := range cfg.Aliases {
		if !a.Is4() {
			s.Close()
			s.Wait()
			return nil, fmt.Errorf("cannot add alias %s: only IPv4 is supported", a)
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(a.As4()), PrefixLen: 32},
		}
		// NeverPrimaryEndpoint: the stack never picks an alias as the
		// source of its own packets.
		if e := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{PEB: stack.NeverPrimaryEndpoint}); e != nil {
			return fail("add alias "+a.String(), e)
		}
	}
	return st, nil
}

// SetAddress gives the NIC its address and routes: the subnet on-link and,
// if gw is valid, a default route through gw. It replaces any earlier address.
func (st *Stack) SetAddress(p netip.Prefix, gw netip.Addr) error {
	if !p.Addr().Is4() {
		return fmt.Errorf("cannot set address %s: only IPv4 is supported", p)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.addr.IsValid() {
		_ = st.s.RemoveAddress(nicID, tcpip.AddrFrom4(st.addr.Addr().As4()))
	}
	pa := tcpip.ProtocolAddress{
		Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{
			Address:   tcpip.AddrFrom4(p.Addr().As4()),
			PrefixLen: p.Bits(),
		},
	}
	if e := st.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); e != nil {
		return fmt.Errorf("cannot add address %s: %w", p, goError(e))
	}
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom4(p.Masked().Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(p.Bits(), 32)))
	if err != nil {
		return fmt.Errorf("cannot make subnet %s: %w", p, err)
	}
	routes := []tcpip.Route{{Destination: sub, NIC: nicID}}
	if gw.IsValid() {
		routes = append(routes, tcpip.Route{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw.As4()), NIC: nicID})
	} else {
		// Gateway mode: everything (the limited broadcast the DHCP
		// server answers to included) leaves through the one NIC.
		routes = append(routes, tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	st.s.SetRouteTable(routes)
	st.addr = p
	return nil
}

// MAC returns the NIC's Ethernet address.
func (st *Stack) MAC() net.HardwareAddr { return net.HardwareAddr(st.mac) }

// InjectFrame hands one Ethernet frame from the wire to the stack. The
// caller may reuse frame afterwards. Frames shorter than an Ethernet header
// are ignored.
func (st *Stack) InjectFrame(frame []byte) {
	if len(frame) < header.EthernetMinimumSize {
		return
	}
	if st.p2p {
		st.learnPeer(frame[6:12])
	}
	// MakeWithData copies the frame into a pooled chunk: the one copy
	// the caller's buffer reuse requires.
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithData(frame),
	})
	// The ethernet wrapper reads the real type from the header.
	st.link.InjectInbound(0, pkt)
	pkt.DecRef()
}

// ReadFrame returns the next Ethernet frame the stack sends, blocking until
// there is one, ctx ends, or the stack closes.
func (st *Stack) ReadFrame(ctx context.Context) ([]byte, error) {
	return st.AppendFrame(ctx, nil)
}

// AppendFrame is ReadFrame appending the frame to dst, so a caller that
// reuses one buffer copies each frame once and allocates nothing.
func (st *Stack) AppendFrame(ctx context.Context, dst []byte) ([]byte, error) {
	pkt := st.out.read(ctx)
	if pkt == nil {
		if err := ctx.Err(); err != nil {
			return dst, err
		}
		return dst, ErrClosed
	}
	start := len(dst)
	for _, b := range pkt.AsSlices() {
		dst = append(dst, b...)
	}
	pkt.DecRef()
	if st.p2p && len(dst)-start >= header.EthernetMinimumSize {
		// gVisor left the destination empty (no resolution): the
		// peer is the only host there is.
		if p := st.peer.Load(); p != nil {
			copy(dst[start:start+6], p[:])
		} else {
			copy(dst[start:start+6], header.EthernetBroadcastAddress)
		}
	}
	return dst, nil
}

// Queued returns the number of outbound frames waiting for ReadFrame; a
// writer may batch them before flushing.
func (st *Stack) Queued() int { return st.out.queued() }

// SetBackpressure says whether a reader is draining ReadFrame now. While
// one is, a sender that finds the outbound queue full waits for room
// instead of losing the frame (see queue.go); turn it off when the reader
// stops, or senders wait until Close.
func (st *Stack) SetBackpressure(on bool) { st.out.setBackpressure(on) }

func (st *Stack) learnPeer(mac []byte) {
	if p := st.peer.Load(); p != nil && string(p[:]) == string(mac) {
		return
	}
	var a [6]byte
	copy(a[:], mac)
	st.peer.Store(&a)
}

// ForgetNeighbor drops the cached link address of addr, so the next packet
// to it is resolved with ARP again (the guest MAC changes after a restore).
// A PointToPoint stack has no cache: it follows the peer's MAC by itself.
func (st *Stack) ForgetNeighbor(addr netip.Addr) {
	if !addr.Is4() || st.p2p {
		return
	}
	_ = st.s.RemoveNeighbor(nicID, ipv4.ProtocolNumber, tcpip.AddrFrom4(addr.As4()))
}

// Close stops the stack: every endpoint is closed and ReadFrame returns
// ErrClosed. It waits for the stack's goroutines.
func (st *Stack) Close() {
	st.closeOnce.Do(func() {
		// Wake senders waiting for room first: stack.Close waits for
		// every endpoint, and a waiting sender holds one.
		st.out.close()
		st.s.Close()
		st.link.Close()
		st.s.Wait()
	})
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	fa := tcpip.FullAddress{NIC: nicID, Port: ap.Port()}
	if a := ap.Addr().Unmap(); a.IsValid() && !a.IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(a.AsSlice())
	}
	return fa
}

func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip, port)
}

// DialTCP opens a TCP connection from this stack to dst.
func (st *Stack) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	c, err := gonet.DialContextTCP(ctx, st.s, fullAddr(dst), ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("cannot dial %s: %w", dst, err)
	}
	return c, nil
}

// ListenTCP listens on addr (the address may be unspecified).
func (st *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	l, err := gonet.ListenTCP(st.s, fullAddr(addr), ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s: %w", addr, err)
	}
	return l, nil
}

// DialUDP makes a connected UDP socket to dst.
func (st *Stack) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	ra := fullAddr(dst)
	c, err := gonet.DialUDP(st.s, nil, &ra, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("cannot dial udp %s: %w", dst, err)
	}
	return c, nil
}

// ListenUDP binds a UDP socket to addr (the address may be unspecified). With
// broadcast set it may send to 255.255.255.255, as a DHCP server must.
func (st *Stack) ListenUDP(addr netip.AddrPort, broadcast bool) (net.PacketConn, error) {
	var wq waiter.Queue
	ep, e := st.s.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if e != nil {
		return nil, fmt.Errorf("cannot make udp endpoint: %w", goError(e))
	}
	ep.SocketOptions().SetBroadcast(broadcast)
	if e := ep.Bind(fullAddr(addr)); e != nil {
		ep.Close()
		return nil, fmt.Errorf("cannot bind udp %s: %w", addr, goError(e))
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

// TCPRequest is a TCP connection the guest opened to some destination.
// Exactly one of Accept or Reject must be called.
type TCPRequest struct {
	Src, Dst netip.AddrPort
	r        *tcp.ForwarderRequest
}

// Accept completes the guest's handshake and returns the connection.
func (r *TCPRequest) Accept() (net.Conn, error) {
	var wq waiter.Queue
	ep, e := r.r.CreateEndpoint(&wq)
	if e != nil {
		r.r.Complete(true)
		return nil, fmt.Errorf("cannot accept %s->%s: %w", r.Src, r.Dst, goError(e))
	}
	r.r.Complete(false)
	return gonet.NewTCPConn(&wq, ep), nil
}

// Reject answers the guest's SYN with a RST.
func (r *TCPRequest) Reject() { r.r.Complete(true) }

// HandleTCP makes h see every TCP connection the guest opens that no listener
// takes. h runs on its own goroutine per connection.
func (st *Stack) HandleTCP(h func(*TCPRequest)) {
	fwd := tcp.NewForwarder(st.s, 0, 64, func(r *tcp.ForwarderRequest) {
		id := r.ID()
		h(&TCPRequest{
			Src: addrPort(id.RemoteAddress, id.RemotePort),
			Dst: addrPort(id.LocalAddress, id.LocalPort),
			r:   r,
		})
	})
	st.s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
}

// UDPRequest is the first datagram of a UDP flow no socket is bound to.
type UDPRequest struct {
	Src, Dst netip.AddrPort
	r        *udp.ForwarderRequest
}

// Accept makes a socket connected to the guest's flow; the datagram that
// started it is the first one read.
func (r *UDPRequest) Accept() (net.Conn, error) {
	var wq waiter.Queue
	ep, e := r.r.CreateEndpoint(&wq)
	if e != nil {
		return nil, fmt.Errorf("cannot accept udp %s->%s: %w", r.Src, r.Dst, goError(e))
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

// HandleUDP makes h see the first datagram of every UDP flow no socket is
// bound to. h runs on the stack's packet path and must not block; returning
// false drops the datagram and sends ICMP port unreachable.
func (st *Stack) HandleUDP(h func(*UDPRequest) bool) {
	fwd := udp.NewForwarder(st.s, func(r *udp.ForwarderRequest) bool {
		id := r.ID()
		return h(&UDPRequest{
			Src: addrPort(id.RemoteAddress, id.RemotePort),
			Dst: addrPort(id.LocalAddress, id.LocalPort),
			r:   r,
		})
	})
	st.s.SetTransportProtocolHandler(udp.ProtocolNumber, fwd.HandlePacket)
}

// Stats are counters of one stack, for tests, benchmarks and diagnosis.
type Stats struct {
	// QueueDrops are outbound frames dropped because the queue
	// (Config.QueueLen) was full with backpressure off.
	QueueDrops uint64
	// Dropped are inbound packets the stack dropped, e.g. TCP segments
	// beyond a receive buffer's memory.
	Dropped uint64
	// TCP counters, summed over every connection of the stack.
	SegmentsSent, SegmentsReceived uint64
	Retransmits, Timeouts          uint64
	FastRetransmit, SACKRecovery   uint64
	TLPRecovery, SpuriousRTO       uint64
}

// Stats returns the stack's counters.
func (st *Stack) Stats() Stats {
	all := st.s.Stats()
	t := all.TCP
	return Stats{
		Dropped:          all.DroppedPackets.Value(),
		QueueDrops:       st.out.drops.Load(),
		SegmentsSent:     t.SegmentsSent.Value(),
		SegmentsReceived: t.ValidSegmentsReceived.Value(),
		Retransmits:      t.Retransmits.Value(),
		Timeouts:         t.Timeouts.Value(),
		FastRetransmit:   t.FastRetransmit.Value(),
		SACKRecovery:     t.SACKRecovery.Value(),
		TLPRecovery:      t.TLPRecovery.Value(),
		SpuriousRTO:      t.SpuriousRTORecovery.Value(),
	}
}

// p2pLink hides the Ethernet link's need for address resolution, so the
// NIC gets no neighbor cache: gVisor preallocates a 512-entry map per NIC
// (39 KB, a third of an idle session; issue #3) for a link that has one
// host on it. AppendFrame fills in the destination MAC instead.
type p2pLink struct {
	nested.Endpoint
}

func newP2PLink(child stack.LinkEndpoint) *p2pLink {
	l := &p2pLink{}
	l.Init(child, l)
	return l
}

// Capabilities implements stack.LinkEndpoint.
func (l *p2pLink) Capabilities() stack.LinkEndpointCapabilities {
	return l.Endpoint.Capabilities() &^ stack.CapabilityResolutionRequired
}

// smallRand is a math/rand.Source safe for concurrent use, 40 bytes
// instead of rand.NewSource's 4.9 KB.
type smallRand struct {
	mu  sync.Mutex
	pcg *randv2.PCG
}

func newSmallRand() *smallRand {
	return &smallRand{pcg: randv2.NewPCG(randv2.Uint64(), randv2.Uint64())}
}

func (r *smallRand) Int63() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int64(r.pcg.Uint64() >> 1)
}

func (r *smallRand) Seed(seed int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pcg.Seed(uint64(seed), 0)
}

var _ rand.Source = (*smallRand)(nil)
