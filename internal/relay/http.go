package relay

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// ServeHTTP attaches a websocket to a session. Mount it at /relay/; the URL
// is /relay/{id}?token={token}. Unknown session: 404; wrong token: 401;
// Origin not allowed: 403 (from the websocket library).
func (m *Manager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Path
	if i := strings.LastIndex(id, "/"); i >= 0 {
		id = id[i+1:]
	}
	if !validID(id) {
		http.Error(w, "relay: no session id in the URL (want /relay/{id}?token={token})", http.StatusNotFound)
		return
	}
	s, ok := m.Lookup(id)
	if !ok {
		http.Error(w, "relay: unknown or ended session", http.StatusNotFound)
		return
	}
	if !s.checkToken(r.URL.Query().Get("token")) {
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
