package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pgwasm/pgwasm/internal/pgconf"
)

// maxLine is the longest request line the agent accepts (docs/agent-protocol.md).
const maxLine = 1 << 20

// protocol is the wire protocol's version, sent in the ready event: 2 adds
// streamed results and streamed requests, both opt-in per request, so a
// host that speaks 1 sees no change (docs/agent-protocol.md).
const protocol = 2

// Streamed results come in parts of chunk_bytes of row data (defaultChunk
// when unset); maxRequest caps a request sent in pieces (the agent holds it
// whole: PostgreSQL needs the statement text in one message).
const (
	defaultChunk = 256 << 10
	minChunk     = 4 << 10
	maxChunk     = maxLine
	maxRequest   = 64 << 20
)

// request is the union of every op's fields.
type request struct {
	ID       int64     `json:"id"`
	Op       string    `json:"op"`
	SQL      string    `json:"sql"`
	Params   []*string `json:"params"`
	User     string    `json:"user"`
	Password string    `json:"password"`
	UnixMS   *int64    `json:"unix_ms"`
	Rows     int       `json:"rows"`
	Cols     int       `json:"cols"`
	// Entropy (add_entropy) is base64 in JSON.
	Entropy []byte `json:"entropy"`
	// Thorough (prepare_snapshot) also evicts file pages and replays a
	// typical session: for the published snapshot, not for a user's save.
	Thorough bool `json:"thorough"`
	// Stream (query, exec) sends the rows in parts of ChunkBytes; MaxBytes
	// caps their total (0: no cap).
	Stream     bool  `json:"stream"`
	ChunkBytes int64 `json:"chunk_bytes"`
	MaxBytes   int64 `json:"max_bytes"`
	// More says that the next line continues this request's sql (a
	// request sent in pieces); a continuation line has only id, sql and more.
	More bool `json:"more"`
}

// streamOpts is a streamed request's bounds and where its parts go.
type streamOpts struct {
	ChunkBytes int64
	MaxBytes   int64
	Send       func(stmt int, cols []column, rows [][]*string) error
}

// part is one piece of a streamed result: rows of statement Statement
// (columns with the first piece of each statement). The final response
// follows the parts and carries the rows not sent in one.
type part struct {
	ID        int64       `json:"id"`
	More      bool        `json:"more"`
	Statement int         `json:"statement"`
	Columns   []column    `json:"columns,omitempty"`
	Rows      [][]*string `json:"rows"`
}

// pieces is a request arriving in pieces: its first line, with the sql
// of all lines so far. err, once set, is the answer when the last piece comes.
type pieces struct {
	req request
	sql []byte
	err error
}

// response is the union of every op's answer; empty fields are left out so
// each op sends only what the contract lists.
type response struct {
	ID       int64  `json:"id"`
	OK       bool   `json:"ok"`
	Error    string `json:"error,omitempty"`
	SQLState string `json:"sqlstate,omitempty"`
	Detail   string `json:"detail,omitempty"`
	Hint     string `json:"hint,omitempty"`
	Position int32  `json:"position,omitempty"`

	*result
	Results *[]result `json:"results,omitempty"`

	UptimeMS      *int64       `json:"uptime_ms,omitempty"`
	Postgres      string       `json:"postgres,omitempty"`
	PostgresError string       `json:"postgres_error,omitempty"`
	ServerVersion string       `json:"server_version,omitempty"`
	Network       *netState    `json:"network,omitempty"`
	TimeUnixMS    int64        `json:"time_unix_ms,omitempty"`
	Snapshot      *snapshotLog `json:"snapshot,omitempty"`
}

// result is one statement's outcome. Columns and Rows are never nil so that
// a statement without rows still sends [] rather than null.
type result struct {
	Columns      []column    `json:"columns"`
	Rows         [][]*string `json:"rows"`
	Command      string      `json:"command"`
	RowsAffected int64       `json:"rows_affected"`
}

type column struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	TypeOID uint32 `json:"type_oid"`
}

type readyEvent struct {
	Event    string `json:"event"`
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
}

// sqlError carries PostgreSQL's error fields to the response.
type sqlError struct {
	SQLState string
	Message  string
	Detail   string
	Hint     string
	Position int32
	// Partial holds the results of the statements that ran before the error.
	Partial []result
}

func (e *sqlError) Error() string { return e.Message + " (SQLSTATE " + e.SQLState + ")" }

// database is what the dispatcher needs from PostgreSQL; tests and the fuzzer
// substitute a fake where no server can run.
type database interface {
	Query(ctx context.Context, sql string, params []*string) (result, error)
	Exec(ctx context.Context, sql string) ([]result, error)
	// The streamed forms send rows to stream.Send while they come; the
	// result holds only the rest.
	QueryStream(ctx context.Context, sql string, params []*string, stream *streamOpts) (result, error)
	ExecStream(ctx context.Context, sql string, stream *streamOpts) ([]result, error)
	State(ctx context.Context) dbState
}

type dbState struct {
	Ready bool
	// Recovering: the server refuses connections because it is replaying
	// WAL after a crash (SQLSTATE 57P03, "in recovery mode").
	Recovering bool
	Version    string
	Err        string
}

// system holds the side effects on the guest kernel, injected so tests can
// observe them without changing the host.
type system struct {
	now           func() time.Time
	setClock      func(time.Time) error
	sync          func()
	dropCaches    string
	compactMemory string
	// reclaim is the root memory cgroup's memory.reclaim ("" skips it).
	reclaim string
	// warm runs typical requests after the caches are dropped (warmSQL).
	warm bool
	// console is the psql console's terminal: set_winsize sets its size;
	// with warm, the warm-up SQL is typed into it ("" skips both).
	console    string
	setWinsize func(tty string, rows, cols int) error
	addEntropy func([]byte) error
	// reseedFile is the pgwasm module's generation counter: add_entropy
	// bumps it so that every PostgreSQL session reseeds ("" skips it).
	reseedFile string
	// pgData is PostgreSQL's data directory: net_up writes a new TLS key
	// there ("" keeps the image's).
	pgData  string
	meminfo string
}

type server struct {
	db      database
	net     *network
	sys     system
	log     *slog.Logger
	start   time.Time
	version string
	// emit sends one message at once (a streamed result's part); set by serve.
	emit func(v any) error
	// partial is the request being received in pieces, if any.
	partial *pieces
}

func newServer(cfg config, db database, log *slog.Logger) *server {
	return &server{
		db:  db,
		net: newNetwork(cfg.Net, execRunner),
		sys: system{
			now:           time.Now,
			setClock:      setSystemClock,
			sync:          syncFS,
			dropCaches:    cfg.DropCaches,
			compactMemory: cfg.CompactMemory,
			reclaim:       cfg.Reclaim,
			warm:          cfg.Warm,
			console:       cfg.Console,
			setWinsize:    setWinsize,
			addEntropy:    addEntropy,
			reseedFile:    pgconf.ReseedFile,
			pgData:        cfg.PGData,
			meminfo:       "/proc/meminfo",
		},
		log:     log,
		start:   time.Now(),
		version: protocolVersion,
	}
}

// serve runs the protocol on rw until it fails or ends. Requests are handled
// one at a time, in order, as the contract promises.
func (s *server) serve(ctx context.Context, rw io.ReadWriter) error {
	w := bufio.NewWriter(rw)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	// send writes one answer (a ping's is two lines: the announcement and
	// the response) with one write, so it leaves the VM in one piece.
	send := func(vs ...any) error {
		for _, v := range vs {
			if err := enc.Encode(v); err != nil {
				return fmt.Errorf("cannot write response: %w", err)
			}
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("cannot write response: %w", err)
		}
		return nil
	}
	// A part is written by hand (appendPart): it is most of a large
	// result's bytes.
	var partBuf []byte
	s.emit = func(v any) error {
		p, ok := v.(part)
		if !ok {
			return send(v)
		}
		var err error
		if partBuf, err = appendPart(partBuf[:0], p); err != nil {
			return fmt.Errorf("cannot encode a result part: %w", err)
		}
		if _, err := w.Write(partBuf); err != nil {
			return fmt.Errorf("cannot write response: %w", err)
		}
		if cap(partBuf) > 4*maxChunk {
			partBuf = nil // one huge row: do not keep its buffer
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("cannot write response: %w", err)
		}
		return nil
	}
	if err := send(s.ready()); err != nil {
		return err
	}
	s.log.Info("agent ready", "version", s.version)

	r := bufio.NewReaderSize(rw, 64<<10)
	for {
		line, tooLong, err := readLine(r, maxLine)
		if tooLong {
			s.log.Warn("request line too long", "limit", maxLine)
			// The id 0 answer is also the answer to a request in pieces
			// this line was meant to continue: the host fails its oldest.
			s.partial = nil
			if err := send(response{Error: fmt.Sprintf("request line longer than %d bytes", maxLine)}); err != nil {
				return err
			}
		} else if len(line) > 0 {
			if vs := s.handleLine(ctx, line); len(vs) > 0 {
				if err := send(vs...); err != nil {
					return err
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("cannot read request: %w", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// readLine returns the next line without its terminator. A line longer than
// max is consumed and discarded (tooLong) so the stream stays in step. A final
// line without "\n" is returned together with io.EOF.
func readLine(r *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if !tooLong {
			if len(buf)+len(chunk) > max+1 { // +1: the terminator does not count
				tooLong, buf = true, nil
			} else {
				buf = append(buf, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			return nil, true, err
		}
		buf = bytes.TrimSuffix(buf, []byte("\n"))
		if len(buf) > max {
			return nil, true, err
		}
		return buf, false, err
	}
}

func (s *server) ready() readyEvent {
	return readyEvent{Event: "ready", Version: s.version, Protocol: protocol}
}

// handleLine decodes and runs one request and returns what to send back, in
// order. Blank lines (a host may send one to resynchronise after a restore)
// get no answer.
func (s *server) handleLine(ctx context.Context, line []byte) []any {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil
	}
	var req request
	if line[0] != '{' {
		return []any{response{Error: "request is not a JSON object"}}
	}
	if err := json.Unmarshal(line, &req); err != nil {
		// In valid JSON with a bad field (wrong type, bad base64) the id is
		// still readable, and an answer the host can match is more useful
		// than one with id 0.
		var id struct {
			ID int64 `json:"id"`
		}
		if json.Unmarshal(line, &id) != nil {
			id.ID = 0
		}
		return []any{response{ID: id.ID, Error: "invalid request: " + err.Error()}}
	}
	var done bool
	var out []any
	if out, done = s.gather(&req); !done {
		return out
	}
	started := time.Now()
	resp := s.handle(ctx, &req)
	resp.ID = req.ID
	s.log.Debug("request", "id", req.ID, "op", req.Op, "ok", resp.OK, "err", resp.Error, "took", time.Since(started))
	if req.Op == "ping" {
		return append(out, s.ready(), resp)
	}
	return append(out, resp)
}

// gather puts a request sent in pieces together (docs/agent-protocol.md,
// "Streamed requests"). It returns what to send first and whether req is
// now whole and should run. The pieces are not answered one by one, so
// sending them costs no round trips; every request gets one answer.
func (s *server) gather(req *request) (out []any, whole bool) {
	p := s.partial
	if p != nil && (req.ID != p.req.ID || req.Op != "") {
		// A new request while one was still in pieces: the host gave up on
		// that one; answer it so nobody waits for it.
		out = append(out, response{ID: p.req.ID, Error: fmt.Sprintf("request %d was not finished: its last piece (without \"more\") never came", p.req.ID)})
		s.partial, p = nil, nil
	}
	if p == nil {
		if req.Op == "" && req.More {
			// A piece of a request the agent no longer holds (an earlier
			// piece was refused with id 0): drop it; its last piece, with
			// no op, gets "request has no op".
			return out, false
		}
		if !req.More {
			return out, true
		}
		s.partial = &pieces{req: *req, sql: []byte(req.SQL)}
		return out, false
	}
	if p.err == nil {
		if len(p.sql)+len(req.SQL) > maxRequest {
			p.err = fmt.Errorf("request in pieces longer than %d bytes of sql", maxRequest)
			p.sql = nil
		} else {
			p.sql = append(p.sql, req.SQL...)
		}
	}
	if req.More {
		return out, false
	}
	s.partial = nil
	if p.err != nil {
		return append(out, response{ID: p.req.ID, Error: p.err.Error()}), false
	}
	*req = p.req
	req.SQL, req.More = string(p.sql), false
	return out, true
}

// streamOpts returns the stream options of a request, nil if it asks for
// none: parts go out as they come, tagged with the request's id.
func (s *server) streamOpts(req *request) (*streamOpts, error) {
	if !req.Stream {
		return nil, nil
	}
	chunk := req.ChunkBytes
	if chunk == 0 {
		chunk = defaultChunk
	}
	if chunk < minChunk || chunk > maxChunk {
		return nil, fmt.Errorf("chunk_bytes must be from %d to %d", minChunk, maxChunk)
	}
	if req.MaxBytes < 0 {
		return nil, errors.New("max_bytes must not be negative")
	}
	id := req.ID
	return &streamOpts{ChunkBytes: chunk, MaxBytes: req.MaxBytes, Send: func(stmt int, cols []column, rows [][]*string) error {
		if s.emit == nil {
			return errors.New("streamed results need a channel")
		}
		return s.emit(part{ID: id, More: true, Statement: stmt, Columns: cols, Rows: rows})
	}}, nil
}

func (s *server) handle(ctx context.Context, req *request) response {
	switch req.Op {
	case "ping":
		up := s.sys.now().Sub(s.start).Milliseconds()
		return response{OK: true, UptimeMS: &up}
	case "status":
		return s.status(ctx)
	case "query":
		if req.SQL == "" {
			return fail(errors.New("query needs sql"))
		}
		stream, err := s.streamOpts(req)
		if err != nil {
			return fail(err)
		}
		res, err := s.db.QueryStream(ctx, req.SQL, req.Params, stream)
		if err != nil {
			return fail(err)
		}
		return response{OK: true, result: &res}
	case "exec":
		stream, err := s.streamOpts(req)
		if err != nil {
			return fail(err)
		}
		res, err := s.db.ExecStream(ctx, req.SQL, stream)
		if err != nil {
			return fail(err)
		}
		if res == nil {
			res = []result{}
		}
		return response{OK: true, Results: &res}
	case "set_password":
		if err := s.setPassword(ctx, req.User, req.Password); err != nil {
			return fail(err)
		}
		return response{OK: true}
	case "set_time":
		if req.UnixMS == nil {
			return fail(errors.New("set_time needs unix_ms"))
		}
		if err := s.sys.setClock(time.UnixMilli(*req.UnixMS)); err != nil {
			return fail(err)
		}
		return response{OK: true}
	case "set_winsize":
		if req.Rows < 1 || req.Rows > maxWinsize || req.Cols < 1 || req.Cols > maxWinsize {
			return fail(fmt.Errorf("set_winsize needs rows and cols from 1 to %d", maxWinsize))
		}
		if s.sys.console == "" {
			return fail(errors.New("set_winsize: the agent has no console terminal (-console)"))
		}
		if err := s.sys.setWinsize(s.sys.console, req.Rows, req.Cols); err != nil {
			return fail(err)
		}
		return response{OK: true}
	case "add_entropy":
		if n := len(req.Entropy); n < minEntropy || n > maxEntropy {
			return fail(fmt.Errorf("add_entropy needs %d to %d bytes of entropy (base64), got %d", minEntropy, maxEntropy, n))
		}
		if err := s.sys.addEntropy(req.Entropy); err != nil {
			return fail(err)
		}
		if err := reseedSessions(s.sys.reseedFile); err != nil {
			return fail(err)
		}
		return response{OK: true}
	case "net_up":
		// A fresh TLS key before the VM is reachable: the image's is public.
		var fingerprint string
		if s.sys.pgData != "" {
			fp, err := s.rotateTLS(ctx)
			if err != nil {
				return fail(fmt.Errorf("net_up: %w", err))
			}
			fingerprint = fp
		}
		st, err := s.net.up(ctx)
		if err != nil {
			return fail(err)
		}
		st.TLSCertSHA256 = fingerprint
		return response{OK: true, Network: &st}
	case "net_down":
		if err := s.net.down(ctx); err != nil {
			return fail(err)
		}
		return response{OK: true}
	case "prepare_snapshot":
		return s.prepareSnapshot(ctx, req.Thorough)
	case "":
		return fail(errors.New("request has no op"))
	default:
		return fail(fmt.Errorf("unknown op %q", req.Op))
	}
}

func (s *server) status(ctx context.Context) response {
	st := s.db.State(ctx)
	resp := response{
		OK:            true,
		Postgres:      "starting",
		PostgresError: st.Err,
		ServerVersion: st.Version,
		TimeUnixMS:    s.sys.now().UnixMilli(),
	}
	switch {
	case st.Ready:
		resp.Postgres = "ready"
	case st.Recovering:
		resp.Postgres = "recovering"
	}
	ns := s.net.state()
	resp.Network = &ns
	return resp
}

func fail(err error) response {
	var se *sqlError
	if errors.As(err, &se) {
		r := response{
			Error:    se.Message,
			SQLState: se.SQLState,
			Detail:   se.Detail,
			Hint:     se.Hint,
			Position: se.Position,
		}
		if len(se.Partial) > 0 {
			r.Results = &se.Partial
		}
		return r
	}
	return response{Error: err.Error()}
}
