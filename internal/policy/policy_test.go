package policy

import (
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		addr string
		want string
	}{
		{"8.8.8.8", ReasonAllowed},
		{"1.1.1.1", ReasonAllowed},
		{"2606:4700:4700::1111", ReasonAllowed},
		{"0.0.0.0", ReasonUnspecified},
		{"0.1.2.3", ReasonUnspecified},
		{"127.0.0.1", ReasonLoopback},
		{"127.255.255.254", ReasonLoopback},
		{"10.0.2.2", ReasonPrivate},
		{"172.16.0.1", ReasonPrivate},
		{"172.31.255.255", ReasonPrivate},
		{"172.32.0.1", ReasonAllowed},
		{"192.168.1.1", ReasonPrivate},
		{"100.64.0.1", ReasonCGNAT},
		{"100.127.255.255", ReasonCGNAT},
		{"100.128.0.1", ReasonAllowed},
		{"169.254.169.254", ReasonLinkLocal},
		{"224.0.0.1", ReasonMulticast},
		{"239.255.255.250", ReasonMulticast},
		{"255.255.255.255", ReasonBroadcast},
		{"240.0.0.1", ReasonReserved},
		{"192.0.2.1", ReasonDocumentation},
		{"198.51.100.7", ReasonDocumentation},
		{"203.0.113.9", ReasonDocumentation},
		{"198.18.0.1", ReasonBenchmark},
		{"198.19.255.255", ReasonBenchmark},
		{"192.0.0.170", ReasonReserved},
		{"::", ReasonUnspecified},
		{"::1", ReasonLoopback},
		{"fd00::1", ReasonPrivate},
		{"fc00::1", ReasonPrivate},
		{"fe80::1", ReasonLinkLocal},
		{"fe80::1%eth0", ReasonLinkLocal},
		{"ff02::1", ReasonMulticast},
		{"2001:db8::1", ReasonDocumentation},
		{"2001:2::1", ReasonBenchmark},
		{"2002:c0a8:0101::1", ReasonReserved},
		{"64:ff9b::7f00:1", ReasonReserved},
		{"::ffff:127.0.0.1", ReasonLoopback},
		{"::ffff:10.1.2.3", ReasonPrivate},
		{"::ffff:169.254.169.254", ReasonLinkLocal},
		{"::ffff:8.8.8.8", ReasonAllowed},
		{"::127.0.0.1", ReasonReserved},
		{"100::1", ReasonReserved},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		if got := Classify(a); got != tt.want {
			t.Errorf("Classify(%q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
	if got := Classify(netip.Addr{}); got != ReasonInvalid {
		t.Errorf("Classify(zero) = %q, want %q", got, ReasonInvalid)
	}
}

func TestParseRule(t *testing.T) {
	tests := []struct {
		in      string
		want    string // Rule.String(); empty means an error is expected
		wantErr bool
	}{
		{in: "127.0.0.1:5432", want: "127.0.0.1:5432"},
		{in: "127.0.0.1", want: "127.0.0.1"},
		{in: "10.0.0.0/8:5432", want: "10.0.0.0/8:5432"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "::1", want: "::1"},
		{in: "[::1]:5432", want: "[::1]:5432"},
		{in: "[fd00::/8]:53", want: "[fd00::/8]:53"},
		{in: "::ffff:127.0.0.1", want: "127.0.0.1"},
		{in: " 1.2.3.4:80 ", want: "1.2.3.4:80"},
		{in: "", wantErr: true},
		{in: "localhost:5432", wantErr: true},
		{in: "127.0.0.1:0", wantErr: true},
		{in: "127.0.0.1:70000", wantErr: true},
		{in: "127.0.0.1:x", wantErr: true},
		{in: "[::1", wantErr: true},
		{in: "[::1]x", wantErr: true},
		{in: "10.0.0.0/33", wantErr: true},
		{in: "fe80::1%eth0", wantErr: true},
	}
	for _, tt := range tests {
		r, err := ParseRule(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseRule(%q) = %q, want error", tt.in, r)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseRule(%q) error: %v", tt.in, err)
			continue
		}
		if got := r.String(); got != tt.want {
			t.Errorf("ParseRule(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCheck(t *testing.T) {
	p, err := Parse([]string{"127.0.0.1:5432", "127.0.0.2", "10.0.0.0/8:5432", "[::1]:80"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dst    string
		policy Policy
		want   Decision
	}{
		{"8.8.8.8:53", Policy{}, Decision{Allowed: true}},
		{"8.8.8.8:0", Policy{}, Decision{Reason: ReasonPort}},
		{"127.0.0.1:5432", Policy{}, Decision{Reason: ReasonLoopback}},
		{"127.0.0.1:5432", p, Decision{Allowed: true}},
		{"127.0.0.1:5433", p, Decision{Reason: ReasonLoopback}},
		{"127.0.0.2:1", p, Decision{Allowed: true}},
		{"127.0.0.3:5432", p, Decision{Reason: ReasonLoopback}},
		{"10.9.8.7:5432", p, Decision{Allowed: true}},
		{"10.9.8.7:22", p, Decision{Reason: ReasonPrivate}},
		{"[::ffff:10.9.8.7]:5432", p, Decision{Allowed: true}},
		{"[::ffff:127.0.0.1]:5433", p, Decision{Reason: ReasonLoopback}},
		{"[::1]:80", p, Decision{Allowed: true}},
		{"[::1]:81", p, Decision{Reason: ReasonLoopback}},
		{"169.254.169.254:80", p, Decision{Reason: ReasonLinkLocal}},
		{"[2606:4700::1]:443", p, Decision{Allowed: true}},
	}
	for _, tt := range tests {
		dst := netip.MustParseAddrPort(tt.dst)
		if got := tt.policy.Check(dst); got != tt.want {
			t.Errorf("Check(%q) = %+v, want %+v", tt.dst, got, tt.want)
		}
	}
}

func TestCheckAddr(t *testing.T) {
	p, err := Parse([]string{"127.0.0.1:5432"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true}, // some port is open
		{"127.0.0.2", false},
		{"93.184.216.34", true},
		{"10.0.0.1", false},
		{"::ffff:127.0.0.1", true},
	}
	for _, tt := range tests {
		if got := p.CheckAddr(netip.MustParseAddr(tt.addr)).Allowed; got != tt.want {
			t.Errorf("CheckAddr(%q).Allowed = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"127.0.0.1:5432", "10.0.0.0/8:5432", "[::1]:80", "::1", "fd00::/8", "[x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			return
		}
		// Round trip: what String prints, ParseRule reads back the same.
		r2, err := ParseRule(r.String())
		if err != nil {
			t.Fatalf("ParseRule(%q) ok but ParseRule(String()=%q) failed: %v", s, r.String(), err)
		}
		if r2 != r {
			t.Fatalf("round trip %q: %v != %v", s, r2, r)
		}
	})
}
