package dhcp

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func testServer(t testing.TB) *Server {
	s, err := New(Config{
		ServerIP:  netip.MustParseAddr("10.0.2.2"),
		Lease:     netip.MustParsePrefix("10.0.2.15/24"),
		Router:    netip.MustParseAddr("10.0.2.2"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.0.2.2")},
		MTU:       1500,
		LeaseTime: time.Hour,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var mac = net.HardwareAddr{0x00, 0x22, 0x15, 1, 2, 3}

func msg(t testing.TB, mods ...dhcpv4.Modifier) []byte {
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m.ToBytes()
}

func TestHandle(t *testing.T) {
	lease := net.IPv4(10, 0, 2, 15)
	tests := []struct {
		name    string
		req     []byte
		want    dhcpv4.MessageType // 0: no reply
		yiaddr  net.IP
		ignored bool
	}{
		{"discover", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover)), dhcpv4.MessageTypeOffer, lease, false},
		{"request lease", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(lease))), dhcpv4.MessageTypeAck, lease, false},
		{"renew by ciaddr", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(lease)), dhcpv4.MessageTypeAck, lease, false},
		{"request other", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 2, 16)))), dhcpv4.MessageTypeNak, nil, false},
		{"inform", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeInform)), dhcpv4.MessageTypeAck, net.IPv4zero, false},
		{"other server", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 2, 3)))), 0, nil, true},
		{"decline", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline)), 0, nil, true},
		{"reply opcode", msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer), dhcpv4.WithReply(&dhcpv4.DHCPv4{OpCode: dhcpv4.OpcodeBootRequest})), 0, nil, true},
	}
	for _, tt := range tests {
		s := testServer(t)
		out, err := s.Handle(tt.req)
		if tt.ignored {
			if !errors.Is(err, ErrIgnored) {
				t.Errorf("%s: err = %v, want ErrIgnored", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		r, err := dhcpv4.FromBytes(out)
		if err != nil {
			t.Fatalf("%s: reply does not parse: %v", tt.name, err)
		}
		if r.MessageType() != tt.want {
			t.Errorf("%s: type = %s, want %s", tt.name, r.MessageType(), tt.want)
		}
		if tt.yiaddr != nil && !r.YourIPAddr.Equal(tt.yiaddr) {
			t.Errorf("%s: yiaddr = %s, want %s", tt.name, r.YourIPAddr, tt.yiaddr)
		}
		if tt.want == dhcpv4.MessageTypeOffer || tt.want == dhcpv4.MessageTypeAck {
			if ones, _ := r.SubnetMask().Size(); ones != 24 {
				t.Errorf("%s: mask /%d, want /24", tt.name, ones)
			}
			if len(r.Router()) != 1 || !r.Router()[0].Equal(net.IPv4(10, 0, 2, 2)) {
				t.Errorf("%s: router %v", tt.name, r.Router())
			}
			if v := r.Options.Get(dhcpv4.OptionInterfaceMTU); len(v) != 2 || v[0] != 0x05 || v[1] != 0xdc {
				t.Errorf("%s: MTU option %v, want 1500", tt.name, v)
			}
		}
	}
}

func TestLeaseHeldAndReleased(t *testing.T) {
	s := testServer(t)
	if _, ok := s.Lease(); ok {
		t.Fatal("lease held before any request")
	}
	if _, err := s.Handle(msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 2, 15))))); err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Lease(); !ok || got.String() != mac.String() {
		t.Fatalf("Lease() = %s, %v; want %s", got, ok, mac)
	}
	if _, err := s.Handle(msg(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease))); !errors.Is(err, ErrIgnored) {
		t.Fatalf("release: %v", err)
	}
	if _, ok := s.Lease(); ok {
		t.Fatal("lease held after DHCPRELEASE")
	}
}

func FuzzHandle(f *testing.F) {
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform} {
		f.Add(msg(f, dhcpv4.WithMessageType(mt)))
	}
	f.Add([]byte{})
	f.Add(make([]byte, 240))
	s := testServer(f)
	f.Fuzz(func(t *testing.T, req []byte) {
		out, err := s.Handle(req)
		if err != nil {
			return
		}
		// Every reply we send must itself parse.
		if _, err := dhcpv4.FromBytes(out); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
	})
}
