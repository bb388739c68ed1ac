package relay

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/netstack"
	"github.com/pgwasm/pgwasm/internal/policy"
)

// Config holds the relay's network layout and limits. Start from
// DefaultConfig and change what you need.
type Config struct {
	// Subnet, Gateway and Guest lay out every session's private network.
	// Every VM gets the same address: sessions never share a network, and
	// a VM restored from a snapshot keeps a working address.
	Subnet  netip.Prefix
	Gateway netip.Addr
	Guest   netip.Addr
	// GatewayMAC is the gateway's Ethernet address (locally administered).
	GatewayMAC net.HardwareAddr
	// MTU is the IP MTU of the session's netstack, sent in the DHCP lease
	// (our guest takes its MTU from the NIC instead: 9000 on virtio-net,
	// 1500 on the ne2k). TCP segments follow the smaller of the two sides'
	// MSS, so a guest with a smaller MTU works too.
	MTU uint16
	// LeaseTime is the DHCP lease time.
	LeaseTime time.Duration

	// HostAlias, if valid, is an address in Subnet that leads to the relay
	// host's loopback, like QEMU slirp's 10.0.2.2: TCP/UDP to
	// HostAlias:PORT is forwarded to 127.0.0.1:PORT, and only when Egress
	// allows 127.0.0.1:PORT. The guest cannot use 127.0.0.1 itself (it
	// routes 127/8 to its own lo). Off (zero) by default.
	HostAlias netip.Addr

	// Egress decides which destinations VMs may reach.
	Egress policy.Policy
	// DNSUpstreams are "host:port" resolvers. Empty means read ResolvConf.
	DNSUpstreams []string
	// ResolvConf is read when DNSUpstreams is empty.
	ResolvConf string

	// SessionSecret signs session tokens (see token.go). A server that
	// restarts with the same secret, or another server sharing it, accepts
	// the tokens it made and re-creates their sessions when the VM
	// reconnects. Empty: NewManager draws a random one, so sessions do not
	// survive a restart. At least MinSecretLen bytes.
	SessionSecret []byte
	// ClientAddr gives the client address of a websocket request (for the
	// per-client limit when a session is re-created). Nil: the request's
	// RemoteAddr.
	ClientAddr func(*http.Request) netip.Addr

	// AllowedOrigins are websocket Origin host patterns (path.Match
	// syntax, e.g. "*.example.com"). Empty allows only the request's own
	// host; "*" allows any origin.
	AllowedOrigins []string

	// MaxSessions bounds sessions in all; MaxSessionsPerClient those of
	// one client IP address.
	MaxSessions          int
	MaxSessionsPerClient int
	// MaxTCPFlows and MaxUDPFlows bound one session's concurrent flows.
	MaxTCPFlows int
	MaxUDPFlows int
	// BytesPerSecond is each session's bandwidth per direction; 0 means
	// unlimited. BurstBytes is the token bucket depth (at least
	// MaxFrameSize).
	BytesPerSecond int
	BurstBytes     int
	// IdleTimeout ends a session with no frames either way.
	IdleTimeout time.Duration
	// Lifetime ends any session this long after it was created.
	Lifetime time.Duration
	// Grace keeps a session without a websocket this long, so the browser
	// can reconnect (v86 retries every 10 s). Counted from creation too.
	Grace time.Duration
	// MaxFrameSize drops longer frames.
	MaxFrameSize int
	// DialTimeout bounds an outbound TCP dial; UDPIdleTimeout closes a
	// quiet UDP flow.
	DialTimeout    time.Duration
	UDPIdleTimeout time.Duration
	// TCPBuffer sizes the netstack's TCP buffers; zero takes
	// netstack.DefaultTCPBuffer.
	TCPBuffer netstack.BufferSizes
	// CheckInterval is how often timeouts are checked. Zero picks one
	// from the shortest timeout.
	CheckInterval time.Duration
}

// DefaultConfig returns the settings `pgwasm serve` starts from.
//
// The 10 MB/s per direction default is about 250 times the 2022 relay's
// 40 KB/s, and more than an emulated v86 NIC moves in practice (the VM runs
// 70-100 times slower than native), so it never slows a real user; it only
// bounds what one abusive session can take from the host's uplink.
func DefaultConfig() Config {
	return Config{
		Subnet:               netip.MustParsePrefix("10.0.2.0/24"),
		Gateway:              netip.MustParseAddr("10.0.2.2"),
		Guest:                netip.MustParseAddr("10.0.2.15"),
		GatewayMAC:           net.HardwareAddr{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02},
		MTU:                  manifest.VirtioNetMTU, // the guest's on virtio-net
		LeaseTime:            24 * time.Hour,
		ResolvConf:           "/etc/resolv.conf",
		MaxSessions:          10000,
		MaxSessionsPerClient: 16,
		MaxTCPFlows:          256,
		MaxUDPFlows:          64,
		BytesPerSecond:       10 << 20,
		BurstBytes:           1 << 20,
		IdleTimeout:          time.Hour,
		Lifetime:             24 * time.Hour,
		Grace:                60 * time.Second,
		MaxFrameSize:         manifest.VirtioNetMTU + 14 + 8, // Ethernet header + MTU, slack for a VLAN tag
		DialTimeout:          10 * time.Second,
		UDPIdleTimeout:       60 * time.Second,
	}
}

func (c Config) validate() error {
	switch {
	case !c.Subnet.Addr().Is4() || !c.Subnet.Contains(c.Gateway) || !c.Subnet.Contains(c.Guest) || c.Gateway == c.Guest:
		return fmt.Errorf("invalid relay config: gateway %s and guest %s must be distinct addresses in IPv4 subnet %s", c.Gateway, c.Guest, c.Subnet)
	case c.HostAlias.IsValid() && (!c.HostAlias.Is4() || !c.Subnet.Contains(c.HostAlias) || c.HostAlias == c.Gateway || c.HostAlias == c.Guest ||
		c.HostAlias == c.Subnet.Masked().Addr()):
		return fmt.Errorf("invalid relay config: host alias %s must be an IPv4 address in subnet %s other than the gateway %s and the guest %s", c.HostAlias, c.Subnet, c.Gateway, c.Guest)
	case len(c.SessionSecret) > 0 && len(c.SessionSecret) < MinSecretLen:
		return fmt.Errorf("invalid relay config: session secret of %d bytes, want at least %d", len(c.SessionSecret), MinSecretLen)
	case len(c.GatewayMAC) != 6:
		return fmt.Errorf("invalid relay config: gateway MAC %q", c.GatewayMAC)
	case c.MTU < 576:
		return fmt.Errorf("invalid relay config: MTU %d under 576", c.MTU)
	case c.MaxFrameSize < int(c.MTU)+14:
		return fmt.Errorf("invalid relay config: max frame size %d under MTU %d + 14", c.MaxFrameSize, c.MTU)
	case c.MaxSessions <= 0 || c.MaxSessionsPerClient <= 0:
		return fmt.Errorf("invalid relay config: session limits %d/%d must be positive", c.MaxSessions, c.MaxSessionsPerClient)
	case c.BytesPerSecond < 0 || (c.BytesPerSecond > 0 && c.BurstBytes < c.MaxFrameSize):
		return fmt.Errorf("invalid relay config: bandwidth %d B/s, burst %d B (burst must be at least the max frame size %d)", c.BytesPerSecond, c.BurstBytes, c.MaxFrameSize)
	case c.IdleTimeout <= 0 || c.Lifetime <= 0 || c.Grace <= 0:
		return fmt.Errorf("invalid relay config: idle timeout %s, lifetime %s and grace %s must be positive", c.IdleTimeout, c.Lifetime, c.Grace)
	case c.LeaseTime < time.Minute:
		return fmt.Errorf("invalid relay config: lease time %s under a minute", c.LeaseTime)
	}
	return nil
}

func (c Config) checkInterval() time.Duration {
	if c.CheckInterval > 0 {
		return c.CheckInterval
	}
	d := min(c.Grace, c.IdleTimeout, c.Lifetime) / 10
	return max(10*time.Millisecond, min(d, time.Second))
}
