package tunnel

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSourceKey(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 1}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::1"), Port: 1}, "2001:db8:1:2::/64"},
		{&net.UnixAddr{Name: "pipe"}, "invalid Prefix"},
	}
	for _, tt := range tests {
		if got := sourceKey(tt.addr).String(); got != tt.want {
			t.Errorf("sourceKey(%v) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

func TestCounter(t *testing.T) {
	a, b := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/32")
	c := newCounter(2)
	steps := []struct {
		op   string // "+" acquire, "-" release
		k    netip.Prefix
		want bool
	}{
		{"+", a, true},
		{"+", a, true},
		{"+", a, false}, // a is full
		{"+", b, true},  // another source is not
		{"-", a, true},
		{"+", a, true},
		{"+", a, false},
	}
	for i, s := range steps {
		if s.op == "-" {
			c.release(s.k)
			continue
		}
		if got := c.acquire(s.k); got != s.want {
			t.Errorf("step %d: acquire(%v) = %v, want %v", i, s.k, got, s.want)
		}
	}
	off := newCounter(0)
	for i := range 1000 {
		if !off.acquire(a) {
			t.Fatalf("limit 0 refused acquire %d", i)
		}
	}
}

// TestGuard runs sequences of connections through one session's limits.
// Connections are named by source letter and number ("a1"); the table lists
// which connection each step evicts or expires.
func TestGuard(t *testing.T) {
	type step struct {
		op      string // "+a1" admit, "ok a1" authenticated, "-a1" leave, "x a1" deadline
		victims string // evicted by an admit, space separated
		refused bool   // the admit itself is refused
	}
	tests := []struct {
		name              string
		maxConns, maxPre  int
		steps             []step
		wantTotal, wantPA int
	}{
		{"under the limits", 4, 4, []step{{op: "+a1"}, {op: "+b1"}, {op: "ok a1"}}, 2, 1},
		{"pre-auth full: oldest of the only source", 10, 2, []step{{op: "+a1"}, {op: "+a2"}, {op: "+a3", victims: "a1"}}, 2, 2},
		{"pre-auth full: the busiest source pays", 10, 3, []step{
			{op: "+u1"}, {op: "+a1"}, {op: "+a2"}, {op: "+a3", victims: "a1"}, {op: "+a4", victims: "a2"},
		}, 3, 3},
		{"a second source gets in past a flood", 10, 3, []step{
			{op: "+a1"}, {op: "+a2"}, {op: "+a3"}, {op: "+u1", victims: "a1"}, {op: "+a4", victims: "a2"}, {op: "ok u1"},
		}, 3, 2},
		{"ties go to the oldest", 10, 2, []step{{op: "+a1"}, {op: "+b1"}, {op: "+c1", victims: "a1"}}, 2, 2},
		{"session full: a pre-auth connection makes room", 2, 10, []step{
			{op: "+a1"}, {op: "ok a1"}, {op: "+b1"}, {op: "+c1", victims: "b1"},
		}, 2, 1},
		{"session full of authenticated: refused", 2, 10, []step{
			{op: "+a1"}, {op: "ok a1"}, {op: "+b1"}, {op: "ok b1"}, {op: "+c1", refused: true}, {op: "-a1"}, {op: "+c2"},
		}, 2, 1},
		{"deadline frees the slot", 2, 1, []step{{op: "+a1"}, {op: "x a1"}, {op: "+a2"}, {op: "ok a1"}}, 1, 1},
		{"evicted connection leaves without a trace", 10, 1, []step{{op: "+a1"}, {op: "+a2", victims: "a1"}, {op: "-a1"}, {op: "ok a1"}}, 1, 1},
		{"leave while pre-auth and authenticated", 10, 10, []step{{op: "+a1"}, {op: "+a2"}, {op: "ok a2"}, {op: "-a1"}, {op: "-a2"}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGuard(tt.maxConns, tt.maxPre)
			conns := map[string]*tracked{}
			for i, s := range tt.steps {
				op, name := s.op[:1], strings.TrimSpace(s.op[1:])
				if strings.HasPrefix(s.op, "ok ") {
					op, name = "ok", s.op[3:]
				}
				switch op {
				case "+":
					src := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, name[0]}), 32)
					c := &tracked{session: "s", src: src, start: time.Now()}
					conns[name] = c
					victims, ok := g.admit(c)
					var got []string
					for _, v := range victims {
						for n, c := range conns {
							if c == v {
								got = append(got, n)
							}
						}
					}
					if ok == s.refused || strings.Join(got, " ") != s.victims {
						t.Fatalf("step %d %s: admit = %q, %v; want %q, %v", i, s.op, got, ok, s.victims, !s.refused)
					}
				case "ok":
					g.authed(conns[name])
				case "-":
					g.leave(conns[name])
				case "x":
					if !g.expire(conns[name]) {
						t.Fatalf("step %d: expire(%s) = false", i, name)
					}
				}
			}
			if total, pa := g.counts("s"); total != tt.wantTotal || pa != tt.wantPA {
				t.Errorf("counts = %d, %d; want %d, %d", total, pa, tt.wantTotal, tt.wantPA)
			}
		})
	}
}

// pgMsg encodes a backend message.
func pgMsg(typ byte, body ...byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// tlsRec is a TLS record header plus n filler bytes.
func tlsRec(typ byte, n int) []byte {
	b := []byte{typ, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(b[3:], uint16(n))
	return append(b, make([]byte, n)...)
}

func startupMsg() []byte {
	body := []byte{0, 3, 0, 0}
	body = append(body, "user\x00postgres\x00\x00"...)
	b := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(b, uint32(4+len(body)))
	return append(b, body...)
}

func TestAuthWatch(t *testing.T) {
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	authOK := pgMsg('R', 0, 0, 0, 0)
	saslReq := pgMsg('R', append([]byte{0, 0, 0, 10}, "SCRAM-SHA-256\x00\x00"...)...)
	// One exchange: who speaks and what. The record sizes of the TLS
	// cases are those psql/pgx and PostgreSQL 15 showed through a recording
	// proxy: TLS 1.3 with a HelloRetryRequest, SCRAM, then the
	// post-authentication burst (482 bytes).
	type say struct {
		client bool
		b      []byte
	}
	tlsSession := []say{
		{true, tlsRec(22, 1478)},
		{false, cat(tlsRec(22, 88), tlsRec(20, 1))},
		{true, cat(tlsRec(20, 1), tlsRec(22, 291))},
		{false, cat(tlsRec(22, 155), tlsRec(23, 23), tlsRec(23, 386), tlsRec(23, 95), tlsRec(23, 69))},
		{true, cat(tlsRec(23, 69), tlsRec(23, 58))},
		{false, tlsRec(23, 60)},
		{true, tlsRec(23, 98)},
		{false, tlsRec(23, 110)},
		{true, tlsRec(23, 198)},
	}
	burst := say{false, tlsRec(23, 482)}
	tests := []struct {
		name string
		tls  bool // SNI mode: starts inside TLS, after the ClientHello
		talk []say
		want bool
	}{
		{"plaintext trust", false, []say{{true, startupMsg()}, {false, cat(authOK, pgMsg('S', 'a', 0, 'b', 0), pgMsg('Z', 'I'))}}, true},
		{"plaintext scram, no password", false, []say{{true, startupMsg()}, {false, saslReq}, {true, []byte("p....")}}, false},
		{"plaintext after declined TLS", false, []say{{true, sslRequest()}, {false, []byte("N")}, {true, startupMsg()}, {false, cat(saslReq, pgMsg('R', 0, 0, 0, 12, 'v'), authOK)}}, true},
		{"plaintext error", false, []say{{true, startupMsg()}, {false, pgMsg('E', 'S', 'F', 0, 0)}}, false},
		{"ReadyForQuery alone", false, []say{{true, startupMsg()}, {false, pgMsg('Z', 'I')}}, true},
		{"idle", false, nil, false},
		{"ssl request then silence", false, []say{{true, sslRequest()}, {false, []byte("S")}}, false},
		{"port mode TLS, authenticated", false, append(append([]say{{true, sslRequest()}, {false, []byte("S")}}, tlsSession...), burst), true},
		{"port mode TLS, stalled in SCRAM", false, append([]say{{true, sslRequest()}, {false, []byte("S")}}, tlsSession...), false},
		{"port mode TLS, handshake only", false, append([]say{{true, sslRequest()}, {false, []byte("S")}}, tlsSession[:4]...), false},
		{"direct TLS, authenticated", false, append(append([]say{}, tlsSession...), burst), true},
		{"SNI, authenticated", true, append(append([]say{}, tlsSession[1:]...), burst), true},
		{"SNI, big server record before client app data", true, []say{{false, tlsRec(23, 1000)}}, false},
		{"client talks before the answer", false, []say{{true, append(sslRequest(), startupMsg()...)}, {false, []byte("S")}, {false, cat(authOK, tlsRec(23, 500))}}, false},
		{"GSS encryption", false, []say{{true, []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}}, {false, []byte("G")}, {false, authOK}}, false},
		{"garbage", false, []say{{true, []byte("GET / HTTP/1.1\r\n")}, {false, authOK}}, false},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 3, 1 << 20} {
			fired := 0
			w := newAuthWatch(tt.tls, authRecordMin, func() { fired++ })
			for _, s := range tt.talk {
				for b := s.b; len(b) > 0; {
					n := min(chunk, len(b))
					if s.client {
						w.client(b[:n])
					} else {
						w.server(b[:n])
					}
					b = b[n:]
				}
			}
			if got := fired == 1; got != tt.want || fired > 1 {
				t.Errorf("%s (chunks of %d): authenticated %d times, want %v", tt.name, chunk, fired, tt.want)
			}
		}
	}
}
