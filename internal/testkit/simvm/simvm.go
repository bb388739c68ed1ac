// Package simvm is a simulated VM for tests: its own user-space TCP/IP stack
// behind a real websocket to the relay, speaking the same wire format as v86
// (one Ethernet frame per binary message). Like busybox udhcpc, its DHCP
// client sends and receives raw frames, since it has no address yet.
package simvm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"

	"github.com/pgwasm/pgwasm/internal/netstack"
)

// Lease is what DHCP gave the VM.
type Lease struct {
	Addr    netip.Prefix
	Gateway netip.Addr
	DNS     netip.Addr
	MTU     uint16
}

// Options tune a VM.
type Options struct {
	// MAC is the VM's Ethernet address; zero picks a random v86-style
	// 00:22:15:xx:xx:xx.
	MAC net.HardwareAddr
}

// VM is one simulated VM.
type VM struct {
	st  *netstack.Stack
	mac net.HardwareAddr

	dhcpIn chan []byte
	// wsClosed gets the error that ended each websocket's read side
	// (its close status, for clients that reconnect on one).
	wsClosed chan error

	mu     sync.Mutex
	ws     *websocket.Conn
	cancel context.CancelFunc
	pumps  sync.WaitGroup
	lease  Lease
	closed bool
}

// Dial connects a new VM to the relay websocket URL.
func Dial(ctx context.Context, wsURL string) (*VM, error) {
	return DialOptions(ctx, wsURL, Options{})
}

// DialOptions is Dial with options.
func DialOptions(ctx context.Context, wsURL string, o Options) (*VM, error) {
	mac := o.MAC
	if mac == nil {
		mac = net.HardwareAddr{0x00, 0x22, 0x15, 0, 0, 0}
		_, _ = rand.Read(mac[3:])
	}
	st, err := netstack.New(vmStackConfig(mac))
	if err != nil {
		return nil, fmt.Errorf("cannot create VM stack: %w", err)
	}
	vm := &VM{st: st, mac: mac, dhcpIn: make(chan []byte, 8), wsClosed: make(chan error, 4)}
	if err := vm.Reconnect(ctx, wsURL); err != nil {
		st.Close()
		return nil, err
	}
	return vm, nil
}

// vmStackConfig models v86's side of the websocket: the page's
// WebSocket.send never blocks and never drops (it buffers, growing
// bufferedAmount), so the VM's outbound queue is large enough never to
// fill and never applies backpressure. Only one side of the websocket may
// block its sender on a full queue, or each could wait for the other to
// read; the relay is that side.
func vmStackConfig(mac net.HardwareAddr) netstack.Config {
	return netstack.Config{MAC: mac, QueueLen: 1 << 14}
}

// MAC returns the VM's Ethernet address.
func (vm *VM) MAC() net.HardwareAddr { return vm.mac }

// Reconnect replaces the websocket with a new one to wsURL, keeping the
// stack and its connections, as v86 does after a drop.
func (vm *VM) Reconnect(ctx context.Context, wsURL string) error {
	c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		if resp != nil {
			return fmt.Errorf("cannot dial relay websocket: %w (HTTP %d)", err, resp.StatusCode)
		}
		return fmt.Errorf("cannot dial relay websocket: %w", err)
	}
	c.SetReadLimit(64 << 10)
	vm.DropWebsocket()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.closed {
		c.CloseNow()
		return errors.New("vm closed")
	}
	pctx, cancel := context.WithCancel(context.Background())
	vm.ws, vm.cancel = c, cancel
	vm.pumps.Add(2)
	go vm.readPump(pctx, c)
	go vm.writePump(pctx, c)
	return nil
}

// DropWebsocket closes the websocket abruptly (a network drop); the stack
// and its connections stay. Reconnect attaches a new one.
func (vm *VM) DropWebsocket() {
	vm.mu.Lock()
	c, cancel := vm.ws, vm.cancel
	vm.ws, vm.cancel = nil, nil
	vm.mu.Unlock()
	if c == nil {
		return
	}
	cancel()
	c.CloseNow()
	vm.pumps.Wait()
}

func (vm *VM) readPump(ctx context.Context, c *websocket.Conn) {
	defer vm.pumps.Done()
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() == nil {
				select {
				case vm.wsClosed <- err:
				default:
				}
			}
			return
		}
		if isDHCPReply(b) {
			select {
			case vm.dhcpIn <- b:
			default:
			}
			continue
		}
		vm.st.InjectFrame(b)
	}
}

func (vm *VM) writePump(ctx context.Context, c *websocket.Conn) {
	defer vm.pumps.Done()
	var buf []byte
	for {
		f, err := vm.st.AppendFrame(ctx, buf[:0])
		if err != nil {
			return
		}
		buf = f
		if err := c.Write(ctx, websocket.MessageBinary, f); err != nil {
			return
		}
	}
}

// WebsocketClosed delivers the error that ended a websocket the VM did not
// drop itself (websocket.CloseStatus tells the server's close code, e.g.
// 4503 when a relay drains). Nothing reconnects by itself: call Reconnect.
func (vm *VM) WebsocketClosed() <-chan error { return vm.wsClosed }

// SendFrame writes one raw frame to the relay (spoofing tests).
func (vm *VM) SendFrame(ctx context.Context, frame []byte) error {
	vm.mu.Lock()
	c := vm.ws
	vm.mu.Unlock()
	if c == nil {
		return errors.New("cannot send frame: no websocket")
	}
	return c.Write(ctx, websocket.MessageBinary, frame)
}

// isDHCPReply reports an IPv4 UDP frame to port 68.
func isDHCPReply(f []byte) bool {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
		return false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	return ip[9] == 17 && len(ip) >= ihl+8 && binary.BigEndian.Uint16(ip[ihl+2:ihl+4]) == 68
}

// udpPayload returns the UDP payload of an IPv4 frame.
func udpPayload(f []byte) []byte {
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	udp := ip[ihl:]
	n := int(binary.BigEndian.Uint16(udp[4:6]))
	if n < 8 || n > len(udp) {
		return nil
	}
	return udp[8:n]
}

// BuildUDPFrame makes an Ethernet/IPv4/UDP frame (UDP checksum 0, allowed
// for IPv4). Tests use it to forge frames.
func BuildUDPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 17
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:2], src.Port())
	binary.BigEndian.PutUint16(udp[2:4], dst.Port())
	binary.BigEndian.PutUint16(udp[4:6], uint16(8+len(payload)))
	copy(udp[8:], payload)
	return f
}

// BuildARPRequest makes an ARP who-has frame.
func BuildARPRequest(srcMAC net.HardwareAddr, senderIP, targetIP netip.Addr) []byte {
	f := make([]byte, 14+28)
	copy(f[0:6], net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:14], 0x0806)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:2], 1)
	binary.BigEndian.PutUint16(a[2:4], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], 1)
	copy(a[8:14], srcMAC)
	s4, t4 := senderIP.As4(), targetIP.As4()
	copy(a[14:18], s4[:])
	copy(a[24:28], t4[:])
	return f
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

var (
	bcastMAC  = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	dhcpSrc   = netip.AddrPortFrom(netip.IPv4Unspecified(), 68)
	dhcpDst   = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 67)
	retryDHCP = 500 * time.Millisecond
)

// DHCP runs DISCOVER/OFFER/REQUEST/ACK and configures the stack.
func (vm *VM) DHCP(ctx context.Context) (Lease, error) {
	disc, err := dhcpv4.NewDiscovery(vm.mac)
	if err != nil {
		return Lease{}, fmt.Errorf("cannot build DHCP discover: %w", err)
	}
	offer, err := vm.dhcpExchange(ctx, disc, dhcpv4.MessageTypeOffer)
	if err != nil {
		return Lease{}, err
	}
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		return Lease{}, fmt.Errorf("cannot build DHCP request: %w", err)
	}
	ack, err := vm.dhcpExchange(ctx, req, dhcpv4.MessageTypeAck)
	if err != nil {
		return Lease{}, err
	}
	addr, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok {
		return Lease{}, fmt.Errorf("DHCP ack without an address")
	}
	ones, _ := ack.SubnetMask().Size()
	l := Lease{Addr: netip.PrefixFrom(addr, ones)}
	if r := ack.Router(); len(r) > 0 {
		l.Gateway, _ = netip.AddrFromSlice(r[0].To4())
	}
	if d := ack.DNS(); len(d) > 0 {
		l.DNS, _ = netip.AddrFromSlice(d[0].To4())
	}
	if v := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(v) == 2 {
		l.MTU = binary.BigEndian.Uint16(v)
	}
	if err := vm.st.SetAddress(l.Addr, l.Gateway); err != nil {
		return Lease{}, err
	}
	vm.mu.Lock()
	vm.lease = l
	vm.mu.Unlock()
	return l, nil
}

func (vm *VM) dhcpExchange(ctx context.Context, m *dhcpv4.DHCPv4, want dhcpv4.MessageType) (*dhcpv4.DHCPv4, error) {
	frame := BuildUDPFrame(vm.mac, bcastMAC, dhcpSrc, dhcpDst, m.ToBytes())
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no DHCP %s: %w", want, ctx.Err())
		case <-t.C:
			if err := vm.SendFrame(ctx, frame); err != nil {
				return nil, err
			}
			t.Reset(retryDHCP)
		case f := <-vm.dhcpIn:
			r, err := dhcpv4.FromBytes(udpPayload(f))
			if err != nil || r.TransactionID != m.TransactionID {
				continue
			}
			if r.MessageType() == dhcpv4.MessageTypeNak {
				return nil, fmt.Errorf("DHCP NAK")
			}
			if r.MessageType() == want {
				return r, nil
			}
		}
	}
}

// Lease returns the current lease (zero before DHCP).
func (vm *VM) Lease() Lease {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.lease
}

// RcodeError is a DNS answer other than success.
type RcodeError struct{ Rcode int }

func (e *RcodeError) Error() string { return "dns: " + dns.RcodeToString[e.Rcode] }

// Resolve asks the lease's DNS server for name's A records.
func (vm *VM) Resolve(ctx context.Context, name string) ([]netip.Addr, error) {
	l := vm.Lease()
	if !l.DNS.IsValid() {
		return nil, errors.New("cannot resolve: no DNS server (run DHCP first)")
	}
	c, err := vm.st.DialUDP(netip.AddrPortFrom(l.DNS, 53))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(q); err != nil {
		return nil, fmt.Errorf("cannot send DNS query: %w", err)
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, fmt.Errorf("cannot read DNS answer: %w", err)
		}
		if r.Id != q.Id {
			continue
		}
		if r.Rcode != dns.RcodeSuccess {
			return nil, &RcodeError{Rcode: r.Rcode}
		}
		var out []netip.Addr
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
					out = append(out, ip)
				}
			}
		}
		return out, nil
	}
}

// DialTCP connects from the VM to dst.
func (vm *VM) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return vm.st.DialTCP(ctx, dst)
}

// DialUDP makes a connected UDP socket from the VM to dst.
func (vm *VM) DialUDP(_ context.Context, dst netip.AddrPort) (net.Conn, error) {
	return vm.st.DialUDP(dst)
}

// ListenTCP listens on port at the VM's address.
func (vm *VM) ListenTCP(port uint16) (net.Listener, error) {
	return vm.st.ListenTCP(netip.AddrPortFrom(netip.IPv4Unspecified(), port))
}

// Close drops the websocket and stops the stack.
func (vm *VM) Close() error {
	vm.DropWebsocket()
	vm.mu.Lock()
	vm.closed = true
	vm.mu.Unlock()
	vm.st.Close()
	return nil
}

// NetStats returns the VM stack's counters (retransmissions, timeouts,
// frames dropped on a full link queue).
func (vm *VM) NetStats() netstack.Stats { return vm.st.Stats() }
