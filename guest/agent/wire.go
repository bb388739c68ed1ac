package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The agent speaks PostgreSQL's frontend/backend protocol (version 3.0)
// itself, over the Unix socket only and with trust authentication only: the
// agent never needs TLS or passwords, and a full client library (with TLS,
// X.509 and SASL) would triple the agent's size, and with it the pages the
// agent keeps mapped in every state snapshot.

// copyInRefusal is what a COPY ... FROM STDIN fails with: the agent answers
// the server's CopyInResponse with CopyFail instead of leaving the server,
// and the agent's single protocol loop, waiting for data forever.
const copyInRefusal = "COPY FROM STDIN is not supported by the pgwasm agent; copy the data into the VM and use COPY FROM a file"

// maxMessage bounds one backend message (a DataRow with a 1 GB value is the
// largest PostgreSQL can send).
const maxMessage = 1<<30 + 1<<20

// pgError is an ErrorResponse from the server.
type pgError struct {
	Severity, Code, Message, Detail, Hint string
	Position                              int32
}

func (e *pgError) Error() string {
	return e.Severity + ": " + e.Message + " (SQLSTATE " + e.Code + ")"
}

// fatal reports whether the server ends the session after this error.
func (e *pgError) fatal() bool { return e.Severity == "FATAL" || e.Severity == "PANIC" }

// errNotSent marks a failure before any byte of a request reached the
// server, so the request can be sent again on a new connection.
var errNotSent = errors.New("request not sent")

type pgConn struct {
	conn   net.Conn
	r      *bufio.Reader
	w      []byte
	body   []byte
	params map[string]string
	pid    uint32
	closed bool
	log    *slog.Logger
}

// dialPG opens a session on the server's Unix socket.
func dialPG(ctx context.Context, cfg pgConfig, log *slog.Logger) (*pgConn, error) {
	path := filepath.Join(cfg.SocketDir, ".s.PGSQL."+strconv.Itoa(cfg.Port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	c := &pgConn{conn: conn, r: bufio.NewReaderSize(conn, 32<<10), params: map[string]string{}, log: log}
	stop := c.watch(ctx)
	defer stop()

	// StartupMessage: length, protocol 3.0, name/value pairs, a final NUL.
	c.w = append(c.w[:0], 0, 0, 0, 0, 0, 3, 0, 0)
	for _, kv := range [][2]string{{"user", cfg.User}, {"database", cfg.Database}, {"application_name", "pgwasm-agent"}} {
		c.w = append(append(append(append(c.w, kv[0]...), 0), kv[1]...), 0)
	}
	c.w = append(c.w, 0)
	binary.BigEndian.PutUint32(c.w, uint32(len(c.w)))
	if err := c.flush(); err != nil {
		c.Close()
		return nil, err
	}
	for {
		typ, body, err := c.receive()
		if err != nil {
			c.Close()
			return nil, err
		}
		switch typ {
		case 'R':
			if len(body) < 4 {
				c.Close()
				return nil, errors.New("malformed authentication request")
			}
			if m := binary.BigEndian.Uint32(body); m != 0 {
				c.Close()
				return nil, fmt.Errorf("PostgreSQL asks for authentication method %d; the agent only uses trust on the Unix socket", m)
			}
		case 'K':
			if len(body) >= 4 {
				c.pid = binary.BigEndian.Uint32(body)
			}
		case 'E':
			c.Close()
			return nil, parseError(body)
		case 'Z':
			return c, nil
		default:
			c.async(typ, body)
		}
	}
}

// watch makes blocking I/O honour ctx; the returned func stops that.
func (c *pgConn) watch(ctx context.Context) func() {
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		c.conn.SetDeadline(time.Time{})
	}
}

func (c *pgConn) Close() {
	if c.closed {
		return
	}
	c.closed = true
	c.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	c.conn.Write([]byte{'X', 0, 0, 0, 4}) // Terminate; the socket may already be gone
	c.conn.Close()
}

func (c *pgConn) flush() error {
	_, err := c.conn.Write(c.w)
	c.w = c.w[:0]
	if err != nil {
		c.Close()
		return fmt.Errorf("cannot send to postgres: %w", err)
	}
	return nil
}

// receive reads one backend message; its body is valid until the next call.
func (c *pgConn) receive() (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		c.Close()
		return 0, nil, fmt.Errorf("cannot read from postgres: %w", err)
	}
	n := int64(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > maxMessage {
		c.Close()
		return 0, nil, fmt.Errorf("postgres sent a message of bad length %d", n)
	}
	if int64(cap(c.body)) < n {
		c.body = make([]byte, n)
	}
	c.body = c.body[:n]
	if _, err := io.ReadFull(c.r, c.body); err != nil {
		c.Close()
		return 0, nil, fmt.Errorf("cannot read from postgres: %w", err)
	}
	// Keep a huge buffer for one request only.
	body := c.body
	if cap(c.body) > 1<<20 {
		c.body = nil
	}
	return hdr[0], body, nil
}

// async handles the messages the server may send at any time.
func (c *pgConn) async(typ byte, body []byte) {
	switch typ {
	case 'S': // ParameterStatus
		k, rest := cstring(body)
		v, _ := cstring(rest)
		c.params[k] = v
	case 'N': // NoticeResponse: not part of the protocol yet; keep it in the log
		n := parseError(body)
		c.log.Info("postgres notice", "severity", n.Severity, "message", n.Message)
	}
	// 'A' (NotificationResponse) and anything else unexpected is ignored.
}

// alive reports whether the session can still be used, noticing a server
// that closed it (restart, crash) before a request is sent on it. Messages
// that arrived while idle are consumed first: a backend killed by a shutdown
// sends an error before its end of file.
//
// It must not wait: it runs before every request. It used to peek with a
// 1 ms read deadline, and in the VM that deadline expired only at the
// guest's next timer tick, 4-8 ms later with HZ=250 (docs/agent-protocol.md,
// "Latency"); that was most of a `select 1`.
func (c *pgConn) alive() bool {
	for i := 0; i < 16 && !c.closed; i++ {
		if c.r.Buffered() == 0 {
			pending, err := c.pending()
			if err != nil {
				c.log.Info("postgres connection lost", "err", err)
				c.Close()
				return false
			}
			if !pending {
				return true
			}
		}
		typ, body, err := c.receive()
		if err != nil {
			c.log.Info("postgres connection lost", "err", err)
			return false
		}
		if typ == 'E' {
			if e := parseError(body); e.fatal() {
				c.log.Info("postgres connection lost", "err", e)
			}
			continue
		}
		c.async(typ, body)
	}
	c.Close()
	return false
}

// pending reports, without waiting, whether the server has sent something
// the session has not read: a peek that does not block (MSG_PEEK|
// MSG_DONTWAIT on the socket). An end of file is io.EOF.
func (c *pgConn) pending() (bool, error) {
	sc, ok := c.conn.(syscall.Conn)
	if !ok {
		return false, fmt.Errorf("postgres connection %T has no file descriptor to peek at", c.conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("cannot peek at the postgres connection: %w", err)
	}
	var (
		n       int
		peekErr error
		b       [1]byte
	)
	err = rc.Read(func(fd uintptr) bool {
		n, _, peekErr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true // never wait for the socket to become readable
	})
	switch {
	case err != nil:
		return false, fmt.Errorf("cannot peek at the postgres connection: %w", err)
	case errors.Is(peekErr, unix.EAGAIN), errors.Is(peekErr, unix.EINTR):
		return false, nil
	case peekErr != nil:
		return false, fmt.Errorf("cannot peek at the postgres connection: %w", peekErr)
	case n == 0:
		return false, io.EOF
	}
	return true, nil
}

// statement collects one statement's result.
type statement struct {
	res     result
	size    int64
	tooBig  bool
	started bool
	// held is the size of the rows not handed to the sink yet; sentCols
	// says the sink has had this statement's columns.
	held     int64
	sentCols bool
}

// rowSink takes a statement's rows while they come (a streamed result,
// docs/agent-protocol.md "Streamed results"): stmt is the statement's index
// among the results, cols is set only on its first call for a statement.
// An error stops the rows of this request (the rest is drained).
type rowSink func(stmt int, cols []column, rows [][]*string) error

// limits bounds what run keeps. Without a sink every row is held until the
// statement ends and max caps their total; with one, rows go to the sink
// whenever chunk bytes of them are held, so the agent holds at most about
// one chunk (plus one row), and max caps the total streamed.
type limits struct {
	max   int64
	chunk int64
	sink  rowSink
}

// run sends a request and reads the answers up to ReadyForQuery, calling
// done for each finished statement. It returns the first error; the session
// is usable afterwards unless it is closed.
func (c *pgConn) run(ctx context.Context, extended bool, lim limits, done func(result)) error {
	stop := c.watch(ctx)
	defer stop()
	if err := c.flush(); err != nil {
		return errors.Join(errNotSent, err)
	}
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	st := statement{}
	reset := func() { st = statement{res: result{Columns: []column{}, Rows: [][]*string{}}} }
	reset()
	maxBytes := lim.max
	ndone := 0 // statements finished: the index of the current one
	for {
		typ, body, err := c.receive()
		if err != nil {
			keep(err)
			return first
		}
		switch typ {
		case 'T': // RowDescription
			reset()
			st.started = true
			n, body := int(be16(body)), body[min(2, len(body)):]
			for i := 0; i < n && len(body) > 0; i++ {
				var name string
				name, body = cstring(body)
				if len(body) < 18 {
					break
				}
				st.res.Columns = append(st.res.Columns, column{Name: name, TypeOID: binary.BigEndian.Uint32(body[6:])})
				body = body[18:]
			}
		case 'D': // DataRow
			if st.tooBig {
				continue // drain the rest so the session stays usable
			}
			n, body := int(be16(body)), body[min(2, len(body)):]
			row := make([]*string, n)
			for i := 0; i < n && len(body) >= 4; i++ {
				l := int32(binary.BigEndian.Uint32(body))
				body = body[4:]
				if l >= 0 && int(l) <= len(body) {
					s := string(body[:l])
					row[i] = &s
					body = body[l:]
					st.size += int64(l)
				}
			}
			st.size += int64(8 * n)
			if st.size > maxBytes {
				st.tooBig, st.res.Rows = true, nil
				continue
			}
			st.res.Rows = append(st.res.Rows, row)
			if lim.sink == nil {
				continue
			}
			st.held += int64(8 * n)
			for _, v := range row {
				if v != nil {
					st.held += int64(len(*v))
				}
			}
			if st.held < lim.chunk {
				continue
			}
			var cols []column
			if !st.sentCols {
				cols, st.sentCols = st.res.Columns, true
			}
			if err := lim.sink(ndone, cols, st.res.Rows); err != nil {
				keep(err)
				st.tooBig = true
			}
			st.res.Rows, st.held = [][]*string{}, 0
		case 'C': // CommandComplete
			tag, _ := cstring(body)
			if st.tooBig {
				keep(fmt.Errorf("result is larger than %d bytes; add a LIMIT or fetch it in parts", maxBytes))
			} else if first == nil {
				st.res.Command = tag
				st.res.RowsAffected = rowsAffected(tag)
				done(st.res)
				ndone++
			}
			reset()
		case 'I': // EmptyQueryResponse: an empty statement is not a statement
			reset()
		case 'E':
			e := parseError(body)
			keep(e)
			if e.fatal() {
				c.Close()
			}
			reset()
		case 'G': // CopyInResponse: refuse, see copyInRefusal
			c.w = append(c.w, 'f', 0, 0, 0, 0)
			c.w = append(append(c.w, copyInRefusal...), 0)
			binary.BigEndian.PutUint32(c.w[1:], uint32(len(c.w)-1))
			if extended {
				// The Sync sent with the request was ignored in copy mode.
				c.w = append(c.w, 'S', 0, 0, 0, 4)
			}
			if err := c.flush(); err != nil {
				keep(err)
				return first
			}
		case 'Z': // ReadyForQuery
			return first
		case '1', '2', 'n', 't', 's', 'H', 'd', 'c', 'W':
			// ParseComplete, BindComplete, NoData, ParameterDescription,
			// PortalSuspended, CopyOut/CopyData/CopyDone, CopyBoth:
			// COPY TO STDOUT completes, its rows are not returned.
		default:
			c.async(typ, body)
		}
	}
}

// simple queues a Query message (any number of statements).
func (c *pgConn) simple(sql string) error {
	if err := noNUL(sql); err != nil {
		return err
	}
	c.w = c.msg(c.w, 'Q', func(b []byte) []byte { return append(append(b, sql...), 0) })
	return nil
}

// extended queues Parse, Bind, Describe, Execute and Sync for one
// statement with text parameters (nil is NULL) whose types the server infers.
func (c *pgConn) extended(sql string, params [][]byte) error {
	if err := noNUL(sql); err != nil {
		return err
	}
	if len(params) > 65535 {
		return fmt.Errorf("%d parameters: the protocol allows at most 65535", len(params))
	}
	c.w = c.msg(c.w, 'P', func(b []byte) []byte { return append(append(append(b, 0), sql...), 0, 0, 0) })
	c.w = c.msg(c.w, 'B', func(b []byte) []byte {
		b = append(b, 0, 0, 0, 0) // portal "", statement "", no parameter format codes (text)
		b = binary.BigEndian.AppendUint16(b, uint16(len(params)))
		for _, p := range params {
			if p == nil {
				b = binary.BigEndian.AppendUint32(b, 0xffffffff)
				continue
			}
			b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
			b = append(b, p...)
		}
		return append(b, 0, 0) // no result format codes: text
	})
	c.w = c.msg(c.w, 'D', func(b []byte) []byte { return append(b, 'P', 0) })
	c.w = c.msg(c.w, 'E', func(b []byte) []byte { return append(b, 0, 0, 0, 0, 0) })
	c.w = append(c.w, 'S', 0, 0, 0, 4)
	return nil
}

func (c *pgConn) msg(b []byte, typ byte, body func([]byte) []byte) []byte {
	start := len(b)
	b = body(append(b, typ, 0, 0, 0, 0))
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-1))
	return b
}

func noNUL(sql string) error {
	for i := 0; i < len(sql); i++ {
		if sql[i] == 0 {
			return errors.New("SQL text contains a NUL byte")
		}
	}
	return nil
}

// parseError reads the fields of an ErrorResponse or NoticeResponse.
func parseError(body []byte) *pgError {
	e := &pgError{}
	for len(body) > 1 && body[0] != 0 {
		f := body[0]
		var v string
		v, body = cstring(body[1:])
		switch f {
		case 'V':
			e.Severity = v
		case 'S':
			if e.Severity == "" {
				e.Severity = v
			}
		case 'C':
			e.Code = v
		case 'M':
			e.Message = v
		case 'D':
			e.Detail = v
		case 'H':
			e.Hint = v
		case 'P':
			p, _ := strconv.ParseInt(v, 10, 32)
			e.Position = int32(p)
		}
	}
	return e
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (string, []byte) {
	for i, x := range b {
		if x == 0 {
			return string(b[:i]), b[i+1:]
		}
	}
	return string(b), nil
}

func be16(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

// rowsAffected is the number at the end of a command tag ("INSERT 0 2",
// "SELECT 2"), 0 when there is none ("CREATE TABLE").
func rowsAffected(tag string) int64 {
	i := len(tag)
	for i > 0 && tag[i-1] >= '0' && tag[i-1] <= '9' {
		i--
	}
	if i == len(tag) || i == 0 || tag[i-1] != ' ' {
		return 0
	}
	n, _ := strconv.ParseInt(tag[i:], 10, 64)
	return n
}
