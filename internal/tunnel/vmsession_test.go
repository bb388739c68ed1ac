package tunnel

import (
	"context"
	"net"
	"sync"
)

// vmSession is a session whose VM takes at most cap(slots) connections at
// once, as PostgreSQL in the VM does with max_connections 20; more get
// PostgreSQL's own refusal. The host's PostgreSQL behind pgtest has room
// for far more than the VM and sheds idle floods by itself, so it would not
// show the lockout of issue #13.
type vmSession struct {
	*loopSession
	slots chan struct{}
}

func (s *vmSession) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	select {
	case s.slots <- struct{}{}:
	default:
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			b.Write(fatal("53300", "sorry, too many clients already", ""))
		}()
		return a, nil
	}
	c, err := s.loopSession.DialGuest(ctx, port)
	if err != nil {
		<-s.slots
		return nil, err
	}
	return &slotConn{Conn: c, release: sync.OnceFunc(func() { <-s.slots })}, nil
}

// slotConn gives its VM slot back when closed.
type slotConn struct {
	net.Conn
	release func()
}

func (c *slotConn) Close() error {
	c.release()
	return c.Conn.Close()
}
