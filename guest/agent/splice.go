package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The socket channel (docs/socket-protocol.md) gives page code byte streams
// into PostgreSQL: each connection the page opens is a new connection to
// the server's Unix socket, and the agent only splices bytes both ways. It
// runs beside the JSON protocol loop, on its own device, so a connection
// never waits for an agent request and the other way round. The Unix socket
// is trusted (pg_hba), so no TLS and no password: the bytes never leave the
// tab.
type spliceConfig struct {
	Device   string // e.g. /dev/hvc2 (empty: no socket channel)
	MaxConns int    // connections open at once; PostgreSQL's own limit is usually lower
	Window   int    // bytes the host may send per connection before the agent grants more
}

type splicer struct {
	cfg  spliceConfig
	dial func(ctx context.Context) (net.Conn, error)
	log  *slog.Logger
}

func newSplicer(cfg spliceConfig, pg pgConfig, log *slog.Logger) *splicer {
	path := filepath.Join(pg.SocketDir, ".s.PGSQL."+strconv.Itoa(pg.Port))
	return &splicer{
		cfg: cfg,
		dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		log: log.With("channel", cfg.Device),
	}
}

// run keeps the device open until ctx ends, opening it again after a
// failure (like the JSON channels: a v86 without the port has no device).
func (s *splicer) run(ctx context.Context) {
	pause := time.Second
	for {
		f, err := openSerial(s.cfg.Device)
		if err == nil {
			pause = time.Second
			s.log.Info("socket channel open")
			stop := context.AfterFunc(ctx, func() { f.Close() })
			err = s.serve(ctx, f)
			stop()
			f.Close()
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("socket channel failed; opening it again", "err", err, "in", pause)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 30*time.Second)
	}
}

// serve runs the channel on an open device until a read fails; every
// connection still open is closed then.
func (s *splicer) serve(ctx context.Context, dev io.ReadWriter) error {
	ss := &spliceSession{s: s, ctx: ctx, w: dev, conns: map[uint32]*spliceConn{}}
	defer ss.closeAll()
	fr := newFrameReader(dev)
	buf := make([]byte, maxFramePayload)
	for {
		f, err := fr.next(buf)
		if errors.Is(err, errFrame) {
			// Every connection may have lost bytes: end them all, tell
			// the host (connection 0), and hunt for its next sync run.
			s.log.Warn("socket channel out of step; closing every connection", "err", err)
			ss.closeAll()
			ss.send(frameClose, 0, []byte(err.Error()))
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("cannot read the socket channel: %w", err)
		}
		ss.handle(f)
	}
}

type spliceSession struct {
	s   *splicer
	ctx context.Context

	wmu sync.Mutex // one frame at a time on the device
	w   io.Writer
	wb  []byte

	mu    sync.Mutex
	conns map[uint32]*spliceConn
}

// send writes one frame in one write, so frames never interleave.
func (ss *spliceSession) send(typ byte, conn uint32, payload []byte) {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	ss.wb = appendFrame(ss.wb[:0], frame{typ: typ, conn: conn, payload: payload})
	if _, err := ss.w.Write(ss.wb); err != nil {
		// The reader sees the device fail too and ends the session.
		ss.s.log.Warn("cannot write to the socket channel", "err", err)
	}
}

func (ss *spliceSession) sendWindow(conn uint32, n int) {
	ss.send(frameWindow, conn, binary.BigEndian.AppendUint32(nil, uint32(n)))
}

func (ss *spliceSession) handle(f frame) {
	switch f.typ {
	case frameHello:
		// A new host session (a page that booted or restored this VM):
		// none of the connections it may find here are its own.
		ss.closeAll()
		ss.hello(f.payload)
	case frameOpen:
		ss.open(f)
	case frameData:
		if c := ss.conn(f.conn); c != nil {
			c.push(f.payload)
		}
	case frameWindow:
		if c := ss.conn(f.conn); c != nil && len(f.payload) == 4 {
			c.grant(int(binary.BigEndian.Uint32(f.payload)))
		}
	case frameShut:
		if c := ss.conn(f.conn); c != nil {
			c.shutWrite()
		}
	case frameClose:
		if c := ss.conn(f.conn); c != nil {
			c.finish("", false)
		}
	default: // frameOpened comes from the agent only
		ss.s.log.Warn("socket channel: unexpected frame from the host", "type", f.typ, "conn", f.conn)
	}
}

// hello answers a host's hello: a sync run (the host may be in the middle of
// a stale frame of this VM's past), then version, the host's nonce, the
// window per connection, the frame size and the connection limit.
func (ss *spliceSession) hello(p []byte) {
	var nonce uint32
	if len(p) >= 5 {
		nonce = binary.BigEndian.Uint32(p[1:5])
	}
	ss.wmu.Lock()
	if _, err := ss.w.Write(make([]byte, syncRun)); err != nil {
		ss.s.log.Warn("cannot write to the socket channel", "err", err)
	}
	ss.wmu.Unlock()
	b := []byte{spliceVersion}
	b = binary.BigEndian.AppendUint32(b, nonce)
	b = binary.BigEndian.AppendUint32(b, uint32(ss.s.cfg.Window))
	b = binary.BigEndian.AppendUint16(b, maxFramePayload)
	b = binary.BigEndian.AppendUint16(b, uint16(ss.s.cfg.MaxConns))
	ss.send(frameHello, 0, b)
	ss.s.log.Info("socket channel: new host session", "host_version", firstByte(p))
}

func firstByte(p []byte) int {
	if len(p) == 0 {
		return -1
	}
	return int(p[0])
}

func (ss *spliceSession) conn(id uint32) *spliceConn {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.conns[id]
}

func (ss *spliceSession) open(f frame) {
	if f.conn == 0 || len(f.payload) != 4 {
		ss.send(frameClose, f.conn, []byte("bad open frame"))
		return
	}
	ss.mu.Lock()
	if _, dup := ss.conns[f.conn]; dup {
		ss.mu.Unlock()
		ss.send(frameClose, f.conn, []byte("connection id already in use"))
		return
	}
	if len(ss.conns) >= ss.s.cfg.MaxConns {
		ss.mu.Unlock()
		ss.send(frameClose, f.conn, []byte(fmt.Sprintf("too many connections on the socket channel (its limit is %d)", ss.s.cfg.MaxConns)))
		return
	}
	c := &spliceConn{id: f.conn, ss: ss, credit: int(binary.BigEndian.Uint32(f.payload))}
	c.cond = sync.NewCond(&c.mu)
	ss.conns[f.conn] = c
	ss.mu.Unlock()
	go c.run()
}

func (ss *spliceSession) closeAll() {
	ss.mu.Lock()
	conns := make([]*spliceConn, 0, len(ss.conns))
	for _, c := range ss.conns {
		conns = append(conns, c)
	}
	ss.mu.Unlock()
	for _, c := range conns {
		c.finish("", false)
	}
}

// spliceConn is one page connection and its PostgreSQL socket. Bytes from
// the host queue in `in` (at most the window: a host that sends more loses
// the connection) and one goroutine writes them to the socket, granting the
// host more as they leave; another reads the socket while the host has
// granted room, so a page that reads slowly makes PostgreSQL wait, not the
// agent buffer.
type spliceConn struct {
	id uint32
	ss *spliceSession

	mu       sync.Mutex
	cond     *sync.Cond
	c        net.Conn // nil until dialled
	in       [][]byte
	inBytes  int
	credit   int  // bytes the host can still take
	shut     bool // the host will send nothing more
	writeErr bool // the socket refused a write: drop the host's bytes, the reader reports the end
	closed   bool
}

func (c *spliceConn) run() {
	log := c.ss.s.log.With("conn", c.id)
	ctx, cancel := context.WithTimeout(c.ss.ctx, 10*time.Second)
	conn, err := c.ss.s.dial(ctx)
	cancel()
	if err != nil {
		c.finish(fmt.Sprintf("cannot connect to PostgreSQL in the VM: %v", err), true)
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		return
	}
	c.c = conn
	c.mu.Unlock()
	c.ss.send(frameOpened, c.id, nil)
	log.Debug("socket connection open")
	go c.writeLoop()
	c.readLoop()
}

func (c *spliceConn) push(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.shut {
		return
	}
	if c.inBytes+len(b) > c.ss.s.cfg.Window {
		c.mu.Unlock()
		c.finish(fmt.Sprintf("the host sent more than its window of %d bytes", c.ss.s.cfg.Window), true)
		c.mu.Lock()
		return
	}
	c.in = append(c.in, append([]byte(nil), b...))
	c.inBytes += len(b)
	c.cond.Broadcast()
}

func (c *spliceConn) grant(n int) {
	c.mu.Lock()
	c.credit += n
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *spliceConn) shutWrite() {
	c.mu.Lock()
	c.shut = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *spliceConn) writeLoop() {
	for {
		c.mu.Lock()
		for len(c.in) == 0 && !c.shut && !c.closed {
			c.cond.Wait()
		}
		if c.closed {
			c.mu.Unlock()
			return
		}
		if len(c.in) == 0 { // shut, all written: PostgreSQL sees the end
			c.mu.Unlock()
			if cw, ok := c.c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return
		}
		b := c.in[0]
		c.in = c.in[1:]
		drop := c.writeErr
		c.mu.Unlock()
		if !drop {
			if _, err := c.c.Write(b); err != nil {
				// PostgreSQL closed its end (e.g. after a FATAL): what it
				// said before is still to be read, so the reader ends the
				// connection when it reaches the end.
				c.mu.Lock()
				c.writeErr = true
				c.mu.Unlock()
			}
		}
		c.mu.Lock()
		c.inBytes -= len(b)
		closed := c.closed
		c.mu.Unlock()
		if !closed {
			c.ss.sendWindow(c.id, len(b))
		}
	}
}

func (c *spliceConn) readLoop() {
	buf := make([]byte, maxFramePayload)
	for {
		c.mu.Lock()
		for c.credit == 0 && !c.closed {
			c.cond.Wait()
		}
		if c.closed {
			c.mu.Unlock()
			return
		}
		n := min(c.credit, len(buf))
		c.mu.Unlock()
		k, err := c.c.Read(buf[:n])
		if k > 0 {
			c.mu.Lock()
			c.credit -= k
			closed := c.closed
			c.mu.Unlock()
			if closed {
				return
			}
			c.ss.send(frameData, c.id, buf[:k])
		}
		if err != nil {
			reason := ""
			if !errors.Is(err, io.EOF) {
				reason = fmt.Sprintf("PostgreSQL connection failed: %v", err)
			}
			c.finish(reason, true)
			return
		}
	}
}

// finish ends the connection once; tell says whether the host needs a
// close frame (not when the host itself closed it).
func (c *spliceConn) finish(reason string, tell bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	conn := c.c
	c.in, c.inBytes = nil, 0
	c.cond.Broadcast()
	c.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	c.ss.mu.Lock()
	if c.ss.conns[c.id] == c {
		delete(c.ss.conns, c.id)
	}
	c.ss.mu.Unlock()
	if tell {
		c.ss.send(frameClose, c.id, []byte(reason))
	}
}
