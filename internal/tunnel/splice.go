package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// splice copies bytes both ways until both directions end, the session ends
// or the tunnel closes. from is what the client side reads from (it may hold
// bytes already buffered from client). w, if not nil, sees the bytes of both
// directions before they are passed on, until it has seen authentication.
func (t *Tunnel) splice(s Session, mode string, client net.Conn, from io.Reader, guest net.Conn, w *authWatch) {
	t.m.active.WithLabelValues(mode).Inc()
	defer t.m.active.WithLabelValues(mode).Dec()

	stop := make(chan struct{})
	var closeOnce sync.Once
	closeBoth := func() {
		closeOnce.Do(func() {
			client.Close()
			guest.Close()
		})
	}
	go func() {
		select {
		case <-s.Done():
		case <-t.ctx.Done():
		case <-stop:
			return
		}
		closeBoth()
	}()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		var src io.Reader = from
		if w != nil {
			src = &tapReader{r: from, tap: w.client, done: w.done}
		}
		n, _ := io.Copy(guest, src)
		t.m.bytes.WithLabelValues("in").Add(float64(n))
		closeWrite(guest)
	}()
	go func() {
		defer wg.Done()
		var src io.Reader = guest
		if w != nil {
			src = &tapReader{r: guest, tap: w.server, done: w.done}
		}
		n, _ := io.Copy(client, src)
		t.m.bytes.WithLabelValues("out").Add(float64(n))
		closeWrite(client)
	}()
	wg.Wait()
	close(stop)
	closeBoth()
}

// tapReader shows what it reads to tap before returning it, so the watch
// sees a message before the peer can answer it.
type tapReader struct {
	r    io.Reader
	tap  func([]byte)
	done func() bool
}

func (r *tapReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 && !r.done() {
		r.tap(p[:n])
	}
	return n, err
}

// closeWrite half-closes c so the peer sees EOF while replies still flow.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	c.Close()
}

// replayConn is a net.Conn whose reads come from r (bytes already read from
// Conn, then Conn itself), so crypto/tls can handshake over a peeked hello.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func newReplayConn(c net.Conn, seen []byte, rest io.Reader) *replayConn {
	return &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(seen), rest)}
}

// observeSince records the setup time of a connection.
func observeSince(h prometheus.Observer, start time.Time) { h.Observe(time.Since(start).Seconds()) }

// isClosed reports errors that mean a listener was closed on purpose.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled)
}
