package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// spliceHost drives a splicer's session over pipes, as the page does over
// virtio-console port 2.
type spliceHost struct {
	t    *testing.T
	w    *io.PipeWriter
	fr   *frameReader
	got  chan frame
	errs chan error
	// pending frames of connections a test is not waiting for
	held []frame
}

type pipeDev struct {
	io.Reader
	io.Writer
}

func startSplicer(t *testing.T, cfg spliceConfig, pg pgConfig) *spliceHost {
	t.Helper()
	return startSplicerWith(t, cfg, newSplicer(cfg, pg, discardLog()).dial)
}

func startSplicerWith(t *testing.T, cfg spliceConfig, dial func(context.Context) (net.Conn, error)) *spliceHost {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	hostR, agentW := io.Pipe()
	agentR, hostW := io.Pipe()
	s := &splicer{cfg: cfg, dial: dial, log: discardLog()}
	done := make(chan struct{})
	go func() {
		s.serve(ctx, pipeDev{agentR, agentW})
		close(done)
	}()
	h := &spliceHost{t: t, w: hostW, fr: newFrameReader(hostR), got: make(chan frame, 1024), errs: make(chan error, 16)}
	go func() {
		for {
			f, err := h.fr.next(nil)
			if err != nil {
				h.errs <- err
				if f.typ == 0 && !strings.Contains(err.Error(), "protocol") {
					close(h.got)
					return
				}
				continue
			}
			h.got <- f
		}
	}()
	t.Cleanup(func() {
		cancel()
		hostW.Close()
		agentW.Close()
		<-done
	})
	h.hello(42)
	return h
}

func (h *spliceHost) raw(b []byte) {
	h.t.Helper()
	if _, err := h.w.Write(b); err != nil {
		h.t.Fatal(err)
	}
}

func (h *spliceHost) send(typ byte, conn uint32, p []byte) {
	h.t.Helper()
	h.raw(appendFrame(nil, frame{typ: typ, conn: conn, payload: p}))
}

func u32(n int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }

func (h *spliceHost) hello(nonce int) {
	h.t.Helper()
	h.raw(make([]byte, syncRun))
	h.send(frameHello, 0, append([]byte{1}, u32(nonce)...))
	f := h.next(0, frameHello)
	if len(f.payload) != 13 || f.payload[0] != spliceVersion || binary.BigEndian.Uint32(f.payload[1:5]) != uint32(nonce) {
		h.t.Fatalf("hello answer %x", f.payload)
	}
}

// next returns the next frame of conn, of type typ (any, if 0); frames of
// other connections are kept for later.
func (h *spliceHost) next(conn uint32, typ byte) frame {
	h.t.Helper()
	for i, f := range h.held {
		if f.conn == conn {
			h.held = append(h.held[:i], h.held[i+1:]...)
			return h.check(f, typ)
		}
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f, ok := <-h.got:
			if !ok {
				h.t.Fatal("agent's side closed")
			}
			f.payload = bytes.Clone(f.payload)
			if f.conn != conn {
				h.held = append(h.held, f)
				continue
			}
			return h.check(f, typ)
		case <-timeout:
			h.t.Fatalf("no frame for connection %d", conn)
		}
	}
}

func (h *spliceHost) check(f frame, typ byte) frame {
	h.t.Helper()
	if typ != 0 && f.typ != typ {
		h.t.Fatalf("connection %d: frame type %d (%q), want %d", f.conn, f.typ, f.payload, typ)
	}
	return f
}

// readMsgs reads DATA of conn (granting the window back) until the stream
// holds a ReadyForQuery ('Z') or the connection closes; it returns the
// bytes and the close reason, if any.
func (h *spliceHost) readUntilReady(conn uint32) (data []byte, closed bool, reason string) {
	h.t.Helper()
	for {
		f := h.next(conn, 0)
		switch f.typ {
		case frameData:
			data = append(data, f.payload...)
			h.send(frameWindow, conn, u32(len(f.payload)))
			if hasReady(data) {
				return data, false, ""
			}
		case frameWindow:
		case frameClose:
			return data, true, string(f.payload)
		default:
			h.t.Fatalf("unexpected frame %d", f.typ)
		}
	}
}

// hasReady walks backend messages and reports a complete ReadyForQuery.
func hasReady(b []byte) bool {
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if len(b) < 1+n {
			return false
		}
		if b[0] == 'Z' {
			return true
		}
		b = b[1+n:]
	}
	return false
}

func startupMsg(user, db string) []byte {
	var b []byte
	b = append(b, 0, 0, 0, 0, 0, 3, 0, 0)
	for _, kv := range [][2]string{{"user", user}, {"database", db}} {
		b = append(append(append(append(b, kv[0]...), 0), kv[1]...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

func queryMsg(sql string) []byte {
	b := []byte{'Q', 0, 0, 0, 0}
	b = append(append(b, sql...), 0)
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
	return b
}

// openConn opens connection id and logs in.
func (h *spliceHost) openConn(id uint32, window int) {
	h.t.Helper()
	h.send(frameOpen, id, u32(window))
	h.next(id, frameOpened)
	h.send(frameData, id, startupMsg("postgres", "postgres"))
	if _, closed, reason := h.readUntilReady(id); closed {
		h.t.Fatalf("login on %d closed: %q", id, reason)
	}
}

func (h *spliceHost) query(id uint32, sql string) string {
	h.t.Helper()
	h.send(frameData, id, queryMsg(sql))
	data, closed, reason := h.readUntilReady(id)
	if closed {
		h.t.Fatalf("query on %d: connection closed: %q", id, reason)
	}
	return string(data)
}

func spliceCfg() spliceConfig { return spliceConfig{MaxConns: 8, Window: 64 << 10} }

func TestSpliceQueriesAndIsolation(t *testing.T) {
	pg := pgtest.Start(t)
	h := startSplicer(t, spliceCfg(), agentConfig(pg))

	h.openConn(1, 1<<20)
	h.openConn(2, 1<<20)
	// Two backends: their pids differ.
	p1 := h.query(1, "select 'pid:'||pg_backend_pid()")
	p2 := h.query(2, "select 'pid:'||pg_backend_pid()")
	if !strings.Contains(p1, "pid:") || p1 == p2 {
		t.Fatalf("backends: %q %q", p1, p2)
	}
	// An error with its SQLSTATE reaches that connection, which stays usable.
	if r := h.query(1, "select 1/0"); !strings.Contains(r, "22012") {
		t.Fatalf("division by zero: %q", r)
	}
	if r := h.query(1, "select 'still '||'here'"); !strings.Contains(r, "still here") {
		t.Fatalf("after error: %q", r)
	}

	// Garbage on connection 2: PostgreSQL answers and closes that one only.
	h.send(frameData, 2, []byte("GARBAGE\x00\x00\x00\x05xyzzy not the protocol"))
	data, closed, reason := h.readUntilReady(2)
	if !closed {
		t.Fatalf("garbage: connection stayed open: %q", data)
	}
	t.Logf("garbage: %q, reason %q", data, reason)
	if r := h.query(1, "select 'one '||'alive'"); !strings.Contains(r, "one alive") {
		t.Fatalf("connection 1 after garbage on 2: %q", r)
	}

	// The host closes connection 1 in the middle of a query: only it ends.
	h.openConn(3, 1<<20)
	h.send(frameData, 1, queryMsg("select pg_sleep(5)"))
	h.send(frameClose, 1, nil)
	if r := h.query(3, "select 'three '||'fine'"); !strings.Contains(r, "three fine") {
		t.Fatalf("connection 3: %q", r)
	}
	// PostgreSQL noticed: the backend of connection 1 goes away.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := h.query(3, "select 'n:'||count(*) from pg_stat_activity where query = 'select pg_sleep(5)'")
		if strings.Contains(r, "n:0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the closed connection's backend still runs: %q", r)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Half-close: Terminate then shut; PostgreSQL ends, the agent closes.
	h.send(frameData, 3, []byte{'X', 0, 0, 0, 4})
	h.send(frameShut, 3, nil)
	if _, closed, reason := h.readUntilReady(3); !closed || reason != "" {
		t.Fatalf("terminate: closed %v reason %q", closed, reason)
	}
}

func TestSpliceFlowControl(t *testing.T) {
	pg := pgtest.Start(t)
	h := startSplicer(t, spliceCfg(), agentConfig(pg))
	h.openConn(1, 1<<20)
	// A reader that grants only 100 bytes at a time never gets more than
	// it granted, and still gets the whole result.
	h.send(frameData, 1, queryMsg("select repeat('x', 100000)"))
	h.send(frameWindow, 1, u32(0)) // no-op grant
	// The window left after login is large; drain it to a small figure by
	// reopening with a small window instead.
	h.send(frameClose, 1, nil)
	h.openConn(2, 1<<20)
	h.send(frameOpen, 3, u32(100))
	h.next(3, frameOpened)
	h.send(frameData, 3, startupMsg("postgres", "postgres"))
	got, outstanding := 0, 100
	var data []byte
	for !hasReady(data) {
		f := h.next(3, 0)
		if f.typ == frameWindow {
			continue
		}
		if f.typ != frameData {
			t.Fatalf("frame %d %q", f.typ, f.payload)
		}
		outstanding -= len(f.payload)
		if outstanding < 0 {
			t.Fatalf("agent sent %d bytes past the window", -outstanding)
		}
		data = append(data, f.payload...)
		got += len(f.payload)
		if outstanding == 0 {
			// No more may come before a grant.
			select {
			case f := <-h.got:
				if f.conn == 3 && f.typ == frameData {
					t.Fatalf("data past the window")
				}
				h.held = append(h.held, frame{typ: f.typ, conn: f.conn, payload: bytes.Clone(f.payload)})
			case <-time.After(50 * time.Millisecond):
			}
			h.send(frameWindow, 3, u32(100))
			outstanding = 100
		}
	}
	h.send(frameData, 3, queryMsg("select repeat('y', 20000)"))
	data = nil
	for !hasReady(data) {
		f := h.next(3, 0)
		if f.typ == frameWindow {
			continue
		}
		outstanding -= len(f.payload)
		if outstanding < 0 {
			t.Fatal("past the window")
		}
		data = append(data, f.payload...)
		if outstanding == 0 {
			h.send(frameWindow, 3, u32(100))
			outstanding = 100
		}
	}
	if !bytes.Contains(data, bytes.Repeat([]byte("y"), 20000)) {
		t.Fatalf("result of %d bytes lacks the value", len(data))
	}
	if r := h.query(2, "select 'two '||'ok'"); !strings.Contains(r, "two ok") {
		t.Fatal(r)
	}

}

// A host that sends past the agent's window loses that connection: here
// "PostgreSQL" never reads, so nothing the host sends leaves the agent.
func TestSpliceWindowOverrun(t *testing.T) {
	cfg := spliceCfg()
	cfg.Window = 3 * maxFramePayload
	h := startSplicerWith(t, cfg, func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		t.Cleanup(func() { b.Close() })
		return a, nil
	})
	h.send(frameOpen, 1, u32(1000))
	h.next(1, frameOpened)
	for i := 0; i < 5; i++ {
		h.send(frameData, 1, make([]byte, maxFramePayload))
	}
	for {
		f := h.next(1, 0)
		if f.typ == frameClose {
			if !strings.Contains(string(f.payload), "window") {
				t.Fatalf("close reason %q", f.payload)
			}
			break
		}
	}
}

func TestSpliceLimitsAndResync(t *testing.T) {
	pg := pgtest.Start(t)
	cfg := spliceCfg()
	cfg.MaxConns = 2
	h := startSplicer(t, cfg, agentConfig(pg))
	h.openConn(1, 1<<20)
	h.openConn(2, 1<<20)
	h.send(frameOpen, 3, u32(1000))
	if f := h.next(3, frameClose); !strings.Contains(string(f.payload), "too many connections") {
		t.Fatalf("third connection: %q", f.payload)
	}
	h.send(frameOpen, 2, u32(1000))
	if f := h.next(2, frameClose); !strings.Contains(string(f.payload), "already in use") {
		t.Fatalf("duplicate id: %q", f.payload)
	}

	// Garbage frames: every connection ends, connection 0 says why, and a
	// new hello after a sync run starts over.
	h.raw([]byte{0xff, 1, 2, 3})
	if f := h.next(0, frameClose); !strings.Contains(string(f.payload), "unknown frame type 255") {
		t.Fatalf("protocol error: %q", f.payload)
	}
	h.hello(7)
	h.openConn(5, 1<<20)
	if r := h.query(5, "select 'after '||'resync'"); !strings.Contains(r, "after resync") {
		t.Fatal(r)
	}
	// A hello alone (a restored VM's new host) closes what the old host had.
	h.hello(8)
	h.send(frameData, 5, queryMsg("select 1"))
	h.openConn(6, 1<<20)
	if r := h.query(6, "select 'six'"); !strings.Contains(r, "six") {
		t.Fatal(r)
	}
}

// PostgreSQL's own connection limit: its FATAL reaches the connection
// that is one too many, and the others keep working.
func TestSpliceServerConnectionLimit(t *testing.T) {
	pg := pgtest.Start(t)
	cfg := spliceCfg()
	cfg.MaxConns = 200
	h := startSplicer(t, cfg, agentConfig(pg))
	var opened []uint32
	for id := uint32(1); id < 200; id++ {
		h.send(frameOpen, id, u32(1<<20))
		h.next(id, frameOpened)
		h.send(frameData, id, startupMsg("postgres", "postgres"))
		data, closed, reason := h.readUntilReady(id)
		if closed {
			if !bytes.Contains(data, []byte("53300")) {
				t.Fatalf("connection %d closed without 53300: %q %q", id, data, reason)
			}
			t.Logf("PostgreSQL refused connection %d: %q", id, data)
			break
		}
		opened = append(opened, id)
	}
	if len(opened) == 0 || len(opened) >= 199 {
		t.Fatalf("%d connections opened", len(opened))
	}
	if r := h.query(opened[0], "select 'first '||'ok'"); !strings.Contains(r, "first ok") {
		t.Fatal(r)
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(append(make([]byte, syncZeros), appendFrame(nil, frame{typ: frameData, conn: 1, payload: []byte("hi")})...))
	f.Add(append(make([]byte, syncZeros), 0xff, 0, 0))
	f.Add(append(make([]byte, syncZeros), frameData, 0, 0, 0, 1, 0xff, 0xff))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := newFrameReader(bytes.NewReader(b))
		for i := 0; i < len(b)+1; i++ {
			fm, err := fr.next(nil)
			if err != nil {
				if err == io.EOF || err == io.ErrUnexpectedEOF || strings.Contains(err.Error(), "protocol") {
					if err == io.EOF || err == io.ErrUnexpectedEOF {
						return
					}
					continue
				}
				t.Fatalf("error %v", err)
			}
			if fm.typ < frameHello || fm.typ > frameClose || len(fm.payload) > maxFramePayload {
				t.Fatalf("bad frame %+v", fm)
			}
			// What was parsed encodes back to the same bytes after a sync.
			enc := appendFrame(make([]byte, syncZeros), fm)
			back, err := newFrameReader(bytes.NewReader(enc)).next(nil)
			if err != nil || back.typ != fm.typ || back.conn != fm.conn || !bytes.Equal(back.payload, fm.payload) {
				t.Fatalf("round trip: %+v -> %+v (%v)", fm, back, err)
			}
		}
	})
}
