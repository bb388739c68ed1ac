// Package dhcp is a DHCPv4 server for a network with exactly one client: the
// VM of one relay session. It hands out one fixed lease (every VM gets the
// same address; sessions are isolated) and remembers which client holds it,
// so a second MAC (the VM after a restore with a new random MAC) takes the
// lease over rather than being refused: there is only ever one VM.
package dhcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Config describes the lease.
type Config struct {
	ServerIP  netip.Addr   // the gateway; also the server identifier
	Lease     netip.Prefix // the client's address and subnet, e.g. 10.0.2.15/24
	Router    netip.Addr
	DNS       []netip.Addr
	MTU       uint16
	LeaseTime time.Duration
}

func (c Config) validate() error {
	if !c.ServerIP.Is4() || !c.Lease.Addr().Is4() || !c.Router.Is4() {
		return fmt.Errorf("cannot configure DHCP: server %s, lease %s and router %s must be IPv4", c.ServerIP, c.Lease, c.Router)
	}
	if c.LeaseTime < time.Minute {
		return fmt.Errorf("cannot configure DHCP: lease time %s is under a minute", c.LeaseTime)
	}
	return nil
}

// Server answers DHCP requests. Use Handle for one message or Serve for a
// socket bound to port 67.
type Server struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	holder net.HardwareAddr // nil when the lease is free
	expiry time.Time
	now    func() time.Time
}

// New makes a server.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: log, now: time.Now}, nil
}

// Lease reports who holds the lease, if anyone.
func (s *Server) Lease() (net.HardwareAddr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder == nil || s.now().After(s.expiry) {
		return nil, false
	}
	return append(net.HardwareAddr(nil), s.holder...), true
}

// Release frees the lease (the session ends).
func (s *Server) Release() {
	s.mu.Lock()
	s.holder = nil
	s.mu.Unlock()
}

// ErrIgnored means the message needs no answer.
var ErrIgnored = errors.New("dhcp message ignored")

// Handle answers one DHCP message. It returns ErrIgnored (wrapped) when no
// reply is due, and an error for malformed input.
func (s *Server) Handle(req []byte) ([]byte, error) {
	m, err := dhcpv4.FromBytes(req)
	if err != nil {
		return nil, fmt.Errorf("cannot parse DHCP message: %w", err)
	}
	if m.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, fmt.Errorf("%w: opcode %s", ErrIgnored, m.OpCode)
	}
	if len(m.ClientHWAddr) != 6 {
		return nil, fmt.Errorf("%w: hardware address length %d", ErrIgnored, len(m.ClientHWAddr))
	}
	if sid := m.ServerIdentifier(); sid != nil && !sid.Equal(net.IP(s.cfg.ServerIP.AsSlice())) {
		// Meant for another server; there is none on this network.
		return nil, fmt.Errorf("%w: server identifier %s", ErrIgnored, sid)
	}
	lease := net.IP(s.cfg.Lease.Addr().AsSlice())
	switch mt := m.MessageType(); mt {
	case dhcpv4.MessageTypeDiscover:
		return s.reply(m, dhcpv4.MessageTypeOffer, lease)
	case dhcpv4.MessageTypeRequest:
		want := m.RequestedIPAddress()
		if want == nil {
			want = m.ClientIPAddr // renewing or rebinding
		}
		if !want.Equal(lease) {
			return s.reply(m, dhcpv4.MessageTypeNak, nil)
		}
		s.mu.Lock()
		s.holder = append(net.HardwareAddr(nil), m.ClientHWAddr...)
		s.expiry = s.now().Add(s.cfg.LeaseTime)
		s.mu.Unlock()
		return s.reply(m, dhcpv4.MessageTypeAck, lease)
	case dhcpv4.MessageTypeInform:
		return s.reply(m, dhcpv4.MessageTypeAck, nil)
	case dhcpv4.MessageTypeRelease:
		s.mu.Lock()
		if s.holder.String() == m.ClientHWAddr.String() {
			s.holder = nil
		}
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: release", ErrIgnored)
	default:
		// DECLINE would mean an address conflict, impossible with one
		// client; others are not for servers.
		return nil, fmt.Errorf("%w: message type %s", ErrIgnored, mt)
	}
}

func (s *Server) reply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, yiaddr net.IP) ([]byte, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(s.cfg.ServerIP.AsSlice()))),
	}
	if mt != dhcpv4.MessageTypeNak {
		dns := make([]net.IP, len(s.cfg.DNS))
		for i, a := range s.cfg.DNS {
			dns[i] = net.IP(a.AsSlice())
		}
		mtu := make([]byte, 2)
		binary.BigEndian.PutUint16(mtu, s.cfg.MTU)
		mods = append(mods,
			dhcpv4.WithNetmask(net.CIDRMask(s.cfg.Lease.Bits(), 32)),
			dhcpv4.WithRouter(net.IP(s.cfg.Router.AsSlice())),
			dhcpv4.WithDNS(dns...),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionInterfaceMTU, mtu)),
		)
		if yiaddr != nil {
			mods = append(mods,
				dhcpv4.WithYourIP(yiaddr),
				dhcpv4.WithLeaseTime(uint32(s.cfg.LeaseTime/time.Second)),
			)
		}
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, fmt.Errorf("cannot build DHCP %s: %w", mt, err)
	}
	return resp.ToBytes(), nil
}

// Serve answers requests arriving on conn (bound to port 67) until ctx ends
// or conn fails. Replies go to the limited broadcast address: the client has
// no address yet, so it cannot answer ARP for a unicast reply.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 68}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cannot read DHCP request: %w", err)
		}
		resp, err := s.Handle(buf[:n])
		if err != nil {
			s.log.Debug("dhcp request not answered", "from", from, "err", err)
			continue
		}
		if _, err := conn.WriteTo(resp, bcast); err != nil {
			s.log.Debug("cannot send dhcp reply", "err", err)
		}
	}
}
