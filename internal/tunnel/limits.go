package tunnel

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Limits against pre-authentication exhaustion (issue #13): PostgreSQL in
// the VM has max_connections 20 and keeps an unauthenticated connection for
// authentication_timeout (60 s), so a few hundred idle sockets would lock the
// tab's user out. The tunnel bounds connections per source address and per
// session, closes connections that do not authenticate in time, and, when a
// session is full, makes room by closing a pre-authentication connection of
// the busiest source rather than refusing the newcomer (refusing would hand
// the session to whoever holds the most idle sockets). docs/serve.md,
// "Connection limits", gives the defaults and the reasons.

// sourceKey groups client addresses the way the limits count them: an IPv4
// address alone, IPv6 by its /64, since one host usually holds a whole /64
// and counting single IPv6 addresses would limit nothing.
func sourceKey(a net.Addr) netip.Prefix {
	var ip netip.Addr
	switch v := a.(type) {
	case *net.TCPAddr:
		ip = v.AddrPort().Addr()
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Prefix{} // one shared bucket for odd addresses (pipes in tests)
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// counter caps concurrent holders per source; max 0 counts nothing and
// allows all (behind a balancer that hides client addresses).
type counter struct {
	max int
	mu  sync.Mutex
	n   map[netip.Prefix]int
}

func newCounter(max int) *counter { return &counter{max: max, n: map[netip.Prefix]int{}} }

// acquire takes a slot for k, or reports false when k holds max already.
func (c *counter) acquire(k netip.Prefix) bool {
	if c.max <= 0 {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[k] >= c.max {
		return false
	}
	c.n[k]++
	return true
}

func (c *counter) release(k netip.Prefix) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[k] <= 1 {
		delete(c.n, k)
		return
	}
	c.n[k]--
}

// count returns k's holders (tests).
func (c *counter) count(k netip.Prefix) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// connState is where a tracked connection is in its session's accounting.
type connState int

const (
	statePreauth connState = iota // admitted, authentication not seen yet
	stateAuthed                   // the VM's PostgreSQL accepted the client
	stateGone                     // closed, evicted or expired; no longer counted
)

// tracked is one tunnel connection as the session limits see it.
type tracked struct {
	session string
	src     netip.Prefix
	start   time.Time
	state   connState // guarded by guard.mu

	timer *time.Timer // authentication deadline

	mu     sync.Mutex
	conns  []net.Conn // closed by kill: the client, then the guest once dialled
	killed bool
}

func newTracked(session string, c net.Conn, start time.Time) *tracked {
	return &tracked{session: session, src: sourceKey(c.RemoteAddr()), start: start, conns: []net.Conn{c}}
}

// addConn adds the guest side; false means the connection was killed
// meanwhile and the caller must close c itself.
func (tc *tracked) addConn(c net.Conn) bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.killed {
		return false
	}
	tc.conns = append(tc.conns, c)
	return true
}

// kill closes both sides, which ends the splice.
func (tc *tracked) kill() {
	tc.mu.Lock()
	tc.killed = true
	cs := tc.conns
	tc.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// sessionConns is one session's accounting.
type sessionConns struct {
	total   int
	preauth []*tracked // oldest first
}

// guard counts connections per session. It only decides; the tunnel closes
// what it names, outside the lock.
type guard struct {
	maxConns   int // per session, all states
	maxPreauth int // per session, not yet authenticated

	mu       sync.Mutex
	sessions map[string]*sessionConns
}

func newGuard(maxConns, maxPreauth int) *guard {
	return &guard{maxConns: maxConns, maxPreauth: maxPreauth, sessions: map[string]*sessionConns{}}
}

// admit counts c in its session as a pre-authentication connection. To
// stay within the limits it evicts pre-authentication connections (returned,
// for the caller to close); ok is false when c itself cannot be admitted,
// which happens only when the session is full of authenticated connections.
func (g *guard) admit(c *tracked) (victims []*tracked, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sessions[c.session]
	if s == nil {
		s = &sessionConns{}
		g.sessions[c.session] = s
	}
	s.total++
	s.preauth = append(s.preauth, c)
	c.state = statePreauth
	for s.total > g.maxConns || len(s.preauth) > g.maxPreauth {
		v := pickVictim(s.preauth, c)
		if v == nil {
			g.drop(s, c)
			return victims, false
		}
		g.drop(s, v)
		victims = append(victims, v)
	}
	return victims, true
}

// pickVictim chooses the pre-authentication connection to close when a
// session is full: the oldest of the source holding the most, so one busy
// source pays for its own sockets and a lone user's login is the last to
// go. Never spare, the connection being admitted; nil if there is none
// other.
func pickVictim(preauth []*tracked, spare *tracked) *tracked {
	count := map[netip.Prefix]int{}
	most := 0
	for _, t := range preauth {
		if t == spare {
			continue
		}
		count[t.src]++
		most = max(most, count[t.src])
	}
	for _, t := range preauth { // oldest first: ties go to the oldest connection
		if t != spare && count[t.src] == most {
			return t
		}
	}
	return nil
}

// drop removes c from s; the caller holds g.mu.
func (g *guard) drop(s *sessionConns, c *tracked) {
	if c.state == statePreauth {
		for i, t := range s.preauth {
			if t == c {
				s.preauth = append(s.preauth[:i], s.preauth[i+1:]...)
				break
			}
		}
	}
	c.state = stateGone
	s.total--
	if s.total == 0 {
		delete(g.sessions, c.session)
	}
}

// authed moves c out of the pre-authentication count. It reports whether c
// was still waiting (not evicted, expired or closed).
func (g *guard) authed(c *tracked) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.state != statePreauth {
		return false
	}
	s := g.sessions[c.session]
	for i, t := range s.preauth {
		if t == c {
			s.preauth = append(s.preauth[:i], s.preauth[i+1:]...)
			break
		}
	}
	c.state = stateAuthed
	return true
}

// expire removes c if it has still not authenticated; true means the caller
// must close it.
func (g *guard) expire(c *tracked) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.state != statePreauth {
		return false
	}
	g.drop(g.sessions[c.session], c)
	return true
}

// leave removes a closed connection; it returns the state it had.
func (g *guard) leave(c *tracked) connState {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := c.state
	if st != stateGone {
		g.drop(g.sessions[c.session], c)
	}
	return st
}

// counts returns a session's connections in all and before authentication.
func (g *guard) counts(session string) (total, preauth int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := g.sessions[session]; s != nil {
		return s.total, len(s.preauth)
	}
	return 0, 0
}
