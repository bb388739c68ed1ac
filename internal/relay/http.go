package relay

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// ServeHTTP attaches a websocket to a session. Mount it at /relay/; the URL
// is /relay/{id}?token={token}. An unknown id with a valid token re-creates
// the session (see the package doc). Wrong, forged or expired token: 401;
// a session deleted here: 404; a session limit: 429; Origin not allowed:
// 403 (from the websocket library).
func (m *Manager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Path
	if i := strings.LastIndex(id, "/"); i >= 0 {
		id = id[i+1:]
	}
	if !validID(id) {
		http.Error(w, "relay: no session id in the URL (want /relay/{id}?token={token})", http.StatusNotFound)
		return
	}
	if m.Draining() {
		// The load balancer should have taken this server out; the
		// client retries and lands on another.
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Connection", "close")
		http.Error(w, "relay: "+ErrDraining.Error(), http.StatusServiceUnavailable)
		return
	}
	s, ok := m.Lookup(id)
	if !ok {
		if s, ok = m.restoreFromRequest(w, r, id); !ok {
			return
		}
	} else if !s.checkToken(r.URL.Query().Get("token")) {
		s.log.Info("websocket refused: bad token", "remote", r.RemoteAddr)
		http.Error(w, "relay: missing or wrong session token", http.StatusUnauthorized)
		return
	}
	opts := &websocket.AcceptOptions{
		// Frames are small and often already compressed (TLS); deflate
		// would cost tens of KB per connection.
		CompressionMode: websocket.CompressionDisabled,
	}
	if len(m.cfg.AllowedOrigins) == 1 && m.cfg.AllowedOrigins[0] == "*" {
		opts.InsecureSkipVerify = true
	} else {
		opts.OriginPatterns = m.cfg.AllowedOrigins
	}
	cw := &corkWriter{ResponseWriter: w}
	c, err := websocket.Accept(cw, r, opts)
	if err != nil {
		s.log.Info("websocket refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	s.attach(r.Context(), c, cw.conn)
}

// restoreFromRequest re-creates session id from the request's token, or
// answers the request with the reason it cannot.
func (m *Manager) restoreFromRequest(w http.ResponseWriter, r *http.Request, id string) (*Session, bool) {
	log := m.log.With("session", id, "remote", r.RemoteAddr)
	created, expires, err := verifyToken(m.secret, id, r.URL.Query().Get("token"), time.Now(), m.cfg.Lifetime)
	if err != nil {
		m.metrics.sessionRefused.WithLabelValues("restore-bad-token").Inc()
		log.Info("websocket refused: unknown session, token does not restore it", "err", err)
		msg := "relay: unknown session, and a missing or wrong session token"
		if errors.Is(err, errTokenExpired) {
			msg = "relay: session expired (its lifetime is over)"
		}
		http.Error(w, msg, http.StatusUnauthorized)
		return nil, false
	}
	client := m.clientAddr(r)
	s, fresh, err := m.restore(r.Context(), client, id, created, expires)
	if err != nil {
		log.Warn("cannot restore session", "client", client, "err", err)
		switch {
		case errors.Is(err, ErrDeleted):
			http.Error(w, "relay: session was deleted", http.StatusNotFound)
		case errors.Is(err, ErrDraining):
			w.Header().Set("Retry-After", "1")
			http.Error(w, "relay: "+err.Error(), http.StatusServiceUnavailable)
		case errors.Is(err, ErrTooManySessions), errors.Is(err, ErrTooManySessionsForClient):
			w.Header().Set("Retry-After", "30")
			http.Error(w, "relay: "+err.Error(), http.StatusTooManyRequests)
		default:
			http.Error(w, "relay: cannot restore session", http.StatusServiceUnavailable)
		}
		return nil, false
	}
	m.mu.Lock()
	hook := m.onRestore
	m.mu.Unlock()
	if hook != nil && fresh {
		hook(s, r)
	}
	return s, true
}

func (m *Manager) clientAddr(r *http.Request) netip.Addr {
	if m.cfg.ClientAddr != nil {
		return m.cfg.ClientAddr(r)
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// validID accepts what newID makes: lowercase letters and digits.
func validID(id string) bool {
	if len(id) < 16 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// corkWriter hands the websocket library a corkable connection when it
// hijacks the request's.
type corkWriter struct {
	http.ResponseWriter
	conn *corkConn
}

// Hijack implements http.Hijacker.
func (w *corkWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// The 101 response has been written; the library's writes go
	// through brw.Writer, so point it at the corkable connection.
	if err := brw.Writer.Flush(); err != nil {
		c.Close()
		return nil, nil, err
	}
	w.conn = &corkConn{Conn: c}
	brw.Writer.Reset(w.conn)
	return w.conn, brw, nil
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *corkWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// corkConn batches websocket messages. The websocket library flushes each
// message with its own write system call, which was the largest single
// cost per frame (issue #3); while corked, writes collect in a buffer that
// uncork sends in one call. Only the write loop corks, and it uncorks
// before it waits for the next frame, so a control frame (pong, close)
// written meanwhile by the read side waits at most one burst.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    *[]byte // from corkPool while holding data
}

// corkMax bounds a burst: past it, bytes go out even while corked.
const corkMax = 64 << 10

var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, corkMax+2048); return &b }}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	if c.buf == nil {
		c.buf = corkPool.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= corkMax {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork sends what was held back.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if c.buf == nil {
		return nil
	}
	b := c.buf
	_, err := c.Conn.Write(*b)
	if err != nil {
		return err
	}
	*b = (*b)[:0]
	c.buf = nil
	corkPool.Put(b)
	return nil
}
