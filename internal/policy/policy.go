// Package policy decides which destinations a VM may reach. It is pure: no
// I/O, no clock, so every rule is checked by table tests.
//
// The default is "public internet only": loopback, private, link-local,
// CGNAT, multicast, broadcast, unspecified, documentation, benchmark and other
// special-purpose ranges (IPv4 and IPv6, IPv4-mapped forms included) are
// refused. An operator opens specific destinations with allow rules such as
// "127.0.0.1:5432", "127.0.0.1" (any port) or "10.0.0.0/8:5432".
package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Reasons a destination is refused. They are a small fixed set so they can be
// metric labels.
const (
	ReasonAllowed       = ""
	ReasonUnspecified   = "unspecified"
	ReasonLoopback      = "loopback"
	ReasonPrivate       = "private"
	ReasonLinkLocal     = "link-local"
	ReasonCGNAT         = "cgnat"
	ReasonMulticast     = "multicast"
	ReasonBroadcast     = "broadcast"
	ReasonDocumentation = "documentation"
	ReasonBenchmark     = "benchmark"
	ReasonReserved      = "reserved"
	ReasonInvalid       = "invalid"
	ReasonPort          = "port-zero"
)

// Rule opens one destination: an address range and, optionally, one port.
type Rule struct {
	Prefix netip.Prefix
	Port   uint16 // 0 means any port
}

// String formats the rule the way ParseRule reads it.
func (r Rule) String() string {
	var host string
	if r.Prefix.IsSingleIP() {
		host = r.Prefix.Addr().String()
	} else {
		host = r.Prefix.String()
	}
	if r.Port == 0 {
		return host
	}
	if r.Prefix.Addr().Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(r.Port))
}

// ParseRule reads "ADDR", "ADDR:PORT", "CIDR", "CIDR:PORT", "[V6]:PORT" or
// "[V6CIDR]:PORT".
func ParseRule(s string) (Rule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Rule{}, fmt.Errorf("cannot parse allow rule: empty")
	}
	host, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return Rule{}, fmt.Errorf("cannot parse allow rule %q: missing ]", s)
		}
		host = s[1:end]
		rest := s[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return Rule{}, fmt.Errorf("cannot parse allow rule %q: junk after ]", s)
			}
			port = rest[1:]
		}
	case strings.Count(s, ":") == 1:
		// IPv4 with a port; a bare IPv6 address has two or more colons.
		i := strings.LastIndex(s, ":")
		host, port = s[:i], s[i+1:]
	}
	var r Rule
	if strings.Contains(host, "/") {
		p, err := netip.ParsePrefix(host)
		if err != nil {
			return Rule{}, fmt.Errorf("cannot parse allow rule %q: %w", s, err)
		}
		r.Prefix = unmapPrefix(p).Masked()
	} else {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return Rule{}, fmt.Errorf("cannot parse allow rule %q: %w", s, err)
		}
		if a.Zone() != "" {
			return Rule{}, fmt.Errorf("cannot parse allow rule %q: zones are not supported", s)
		}
		a = a.Unmap()
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return Rule{}, fmt.Errorf("cannot parse allow rule %q: bad port %q", s, port)
		}
		r.Port = uint16(n)
	}
	return r, nil
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// Policy is an egress policy: the default rules plus allow rules that take
// precedence. The zero value allows only public internet.
type Policy struct {
	Allow []Rule
}

// Parse builds a Policy from allow-rule strings.
func Parse(rules []string) (Policy, error) {
	var p Policy
	for _, s := range rules {
		r, err := ParseRule(s)
		if err != nil {
			return Policy{}, err
		}
		p.Allow = append(p.Allow, r)
	}
	return p, nil
}

// Decision is the outcome of a check. Reason is empty when allowed.
type Decision struct {
	Allowed bool
	Reason  string
}

// Check decides whether a VM may open a flow to dst.
func (p Policy) Check(dst netip.AddrPort) Decision {
	a := dst.Addr().WithZone("").Unmap()
	if !a.IsValid() {
		return Decision{Reason: ReasonInvalid}
	}
	for _, r := range p.Allow {
		if r.Prefix.Contains(a) && (r.Port == 0 || r.Port == dst.Port()) {
			return Decision{Allowed: true}
		}
	}
	if dst.Port() == 0 {
		return Decision{Reason: ReasonPort}
	}
	if reason := Classify(a); reason != ReasonAllowed {
		return Decision{Reason: reason}
	}
	return Decision{Allowed: true}
}

// CheckAddr decides whether a VM may reach addr on at least one port. The DNS
// service uses it to judge answers, where the port is not known yet.
func (p Policy) CheckAddr(addr netip.Addr) Decision {
	a := addr.WithZone("").Unmap()
	if !a.IsValid() {
		return Decision{Reason: ReasonInvalid}
	}
	for _, r := range p.Allow {
		if r.Prefix.Contains(a) {
			return Decision{Allowed: true}
		}
	}
	if reason := Classify(a); reason != ReasonAllowed {
		return Decision{Reason: reason}
	}
	return Decision{Allowed: true}
}

type special struct {
	prefix netip.Prefix
	reason string
}

// Special-purpose ranges from the IANA IPv4 and IPv6 registries (RFC 6890 and
// successors). Order matters only where ranges nest (broadcast in 240/4).
var (
	specials4 = []special{
		{netip.MustParsePrefix("255.255.255.255/32"), ReasonBroadcast},
		{netip.MustParsePrefix("0.0.0.0/8"), ReasonUnspecified},
		{netip.MustParsePrefix("10.0.0.0/8"), ReasonPrivate},
		{netip.MustParsePrefix("172.16.0.0/12"), ReasonPrivate},
		{netip.MustParsePrefix("192.168.0.0/16"), ReasonPrivate},
		{netip.MustParsePrefix("100.64.0.0/10"), ReasonCGNAT},
		{netip.MustParsePrefix("127.0.0.0/8"), ReasonLoopback},
		{netip.MustParsePrefix("169.254.0.0/16"), ReasonLinkLocal},
		{netip.MustParsePrefix("192.0.0.0/24"), ReasonReserved},
		{netip.MustParsePrefix("192.0.2.0/24"), ReasonDocumentation},
		{netip.MustParsePrefix("198.51.100.0/24"), ReasonDocumentation},
		{netip.MustParsePrefix("203.0.113.0/24"), ReasonDocumentation},
		{netip.MustParsePrefix("198.18.0.0/15"), ReasonBenchmark},
		{netip.MustParsePrefix("192.88.99.0/24"), ReasonReserved},
		{netip.MustParsePrefix("224.0.0.0/4"), ReasonMulticast},
		{netip.MustParsePrefix("240.0.0.0/4"), ReasonReserved},
	}
	specials6 = []special{
		{netip.MustParsePrefix("::/128"), ReasonUnspecified},
		{netip.MustParsePrefix("::1/128"), ReasonLoopback},
		{netip.MustParsePrefix("fc00::/7"), ReasonPrivate},
		{netip.MustParsePrefix("fe80::/10"), ReasonLinkLocal},
		{netip.MustParsePrefix("fec0::/10"), ReasonLinkLocal},
		{netip.MustParsePrefix("ff00::/8"), ReasonMulticast},
		{netip.MustParsePrefix("2001:db8::/32"), ReasonDocumentation},
		{netip.MustParsePrefix("3fff::/20"), ReasonDocumentation},
		{netip.MustParsePrefix("2001:2::/48"), ReasonBenchmark},
		// Tunnels and translators embed IPv4 addresses that would bypass
		// the IPv4 rules: Teredo, 6to4, NAT64, ORCHID.
		{netip.MustParsePrefix("2001::/23"), ReasonReserved},
		{netip.MustParsePrefix("2002::/16"), ReasonReserved},
		{netip.MustParsePrefix("64:ff9b::/96"), ReasonReserved},
		{netip.MustParsePrefix("64:ff9b:1::/48"), ReasonReserved},
	}
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
)

// Classify returns why addr is not public internet, or ReasonAllowed ("")
// when it is. IPv4-mapped IPv6 addresses are judged as IPv4.
func Classify(addr netip.Addr) string {
	a := addr.WithZone("").Unmap()
	if !a.IsValid() {
		return ReasonInvalid
	}
	if a.Is4() {
		for _, s := range specials4 {
			if s.prefix.Contains(a) {
				return s.reason
			}
		}
		return ReasonAllowed
	}
	for _, s := range specials6 {
		if s.prefix.Contains(a) {
			return s.reason
		}
	}
	// Everything outside 2000::/3 is unassigned or special (including
	// the deprecated IPv4-compatible ::/96 and discard 100::/64).
	if !globalUnicast6.Contains(a) {
		return ReasonReserved
	}
	return ReasonAllowed
}
