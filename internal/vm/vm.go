// Package vm runs the pgwasm VM headless: v86 in a Node process
// (harness/vm.mjs) driven over a JSON line protocol, with SQL going through
// the guest agent on its fastest channel the image offers: virtio-console,
// or the VM's second serial port (docs/agent-protocol.md).
//
//	v, err := vm.Start(ctx, vm.Options{ImageDir: "build/image", Memory: 128})
//	if err != nil { ... }
//	defer v.Close()
//	res, err := v.Query(ctx, "select $1::int + 1", 41)
//
// By default Start restores the image's snapshot for the memory size
// (state-<MB>.bin.zst, made by `pgwasm image snapshot`); FullBoot boots the
// kernel instead.
//
// Boot is the lower-level start the image build uses: it boots explicit
// files (before there is an image directory) and waits for nothing; the
// caller follows the console and takes files out with ExportTree.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// Options says which image to run and how.
type Options struct {
	ImageDir string // built image directory (manifest.json)
	Memory   int    // MB; 0 means the state's size, or manifest.DefaultMemoryMB
	FullBoot bool   // boot the kernel instead of restoring a state
	// StatePath restores this state instead of the image's snapshot.
	StatePath  string
	HarnessDir string // directory of vm.mjs; found automatically when empty
	Node       string // node executable; "node" from PATH when empty
	RelayURL   string // v86 network relay (ws://...), optional
	// AgentChannel is where agent requests go: manifest.ChannelVirtioConsole
	// or manifest.ChannelSerial; empty means the image's first choice.
	AgentChannel string
	// ReadyTimeout bounds the start until PostgreSQL answers; 0 means 60 s
	// for a restore and 5 min for a full boot.
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// Timings are the phases of a start, in milliseconds since Start was called.
type Timings struct {
	Mode            string           `json:"mode"`          // "restore" or "full_boot"
	AgentChannel    string           `json:"agent_channel"` // where agent requests go
	EmulatorStarted int64            `json:"emulator_started_ms"`
	AgentReady      int64            `json:"agent_ready_ms"`
	PostgresReady   int64            `json:"postgres_ready_ms"`
	FirstQuery      int64            `json:"first_query_ms,omitempty"`
	Harness         map[string]int64 `json:"harness_ms,omitempty"` // ms since node started
}

// Column describes one result column.
type Column struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	TypeOID uint32 `json:"type_oid"`
}

// Result is one statement's result; values are PostgreSQL's text format, nil
// for NULL.
type Result struct {
	Columns      []Column    `json:"columns"`
	Rows         [][]*string `json:"rows"`
	Command      string      `json:"command"`
	RowsAffected int64       `json:"rows_affected"`
}

// SQLError is an error PostgreSQL reported.
type SQLError struct {
	Message  string `json:"error"`
	SQLState string `json:"sqlstate"`
	Detail   string `json:"detail,omitempty"`
	Hint     string `json:"hint,omitempty"`
	Position int    `json:"position,omitempty"`
}

func (e *SQLError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ERROR:  %s (SQLSTATE %s)", e.Message, e.SQLState)
	if e.Detail != "" {
		fmt.Fprintf(&b, "\nDETAIL:  %s", e.Detail)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, "\nHINT:  %s", e.Hint)
	}
	return b.String()
}

// AgentError is a failure the guest agent reported that is not an SQL error.
type AgentError struct {
	Op      string
	Message string
}

func (e *AgentError) Error() string { return fmt.Sprintf("agent %s: %s", e.Op, e.Message) }

// BlobStats counts the 9p file contents the VM loaded: what a browser would
// download.
type BlobStats struct {
	Files    int64 `json:"files"`
	Bytes    int64 `json:"bytes"`     // compressed, as stored in blobs/
	RawBytes int64 `json:"raw_bytes"` // decompressed
}

// Stats is what the harness measured so far.
type Stats struct {
	Blob        *BlobStats       `json:"blob"`
	Harness     map[string]int64 `json:"timings"`
	ConsoleTail string           `json:"console_tail"`
	NodeRSS     int64            `json:"memory_rss"`
	NICMAC      string           `json:"nic_mac"` // station address in the emulated NIC's PROM
	// Relay is the state of the NIC's relay websocket: "none" (no relay),
	// "connecting", "open", "closing" or "closed".
	Relay string `json:"relay"`
}

// VM is one running VM.
type VM struct {
	img      *Image
	h        *harness
	logger   *slog.Logger
	memoryMB int
	v86      string
	t0       time.Time
	channel  string // the agent channel requests go to
	// protocol is the agent's protocol version on that channel (its
	// ready event): 2 and later stream results.
	protocol int

	mu      sync.Mutex
	timings Timings
}

// Start starts a VM and returns once PostgreSQL in it answers.
func Start(ctx context.Context, opts Options) (*VM, error) {
	t0 := time.Now()
	img, err := LoadImage(opts.ImageDir)
	if err != nil {
		return nil, err
	}
	logger, harnessDir, v86ver, err := prepare(opts.Logger, opts.HarnessDir)
	if err != nil {
		return nil, err
	}
	mem := opts.Memory
	statePath := ""
	if !opts.FullBoot {
		if statePath, mem, err = pickState(img, opts.StatePath, mem, v86ver, logger); err != nil {
			return nil, err
		}
	}
	if mem == 0 {
		mem = manifest.DefaultMemoryMB
	}
	if err := manifest.CheckMemory(mem); err != nil {
		return nil, err
	}

	channel := opts.AgentChannel
	if channel == "" {
		channel = img.AgentChannels()[0]
	}
	if !slices.Contains(img.AgentChannels(), channel) {
		return nil, fmt.Errorf("the agent in image %s answers on %s, not %s", img.Dir, strings.Join(img.AgentChannels(), " and "), channel)
	}

	v := &VM{img: img, logger: logger, memoryMB: mem, v86: v86ver, t0: t0, channel: channel}
	v.timings.Mode = "restore"
	v.timings.AgentChannel = channel
	if statePath == "" {
		v.timings.Mode = "full_boot"
	}
	v.h, err = startHarness(ctx, nodeName(opts.Node), harnessDir, logger, v.onEvent, nil)
	if err != nil {
		return nil, err
	}
	timeout := opts.ReadyTimeout
	if timeout == 0 {
		timeout = time.Minute
		if statePath == "" {
			timeout = 5 * time.Minute
		}
	}
	readyCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := v.boot(readyCtx, harnessDir, img.bootFiles(), statePath, opts.RelayURL); err != nil {
		if errors.Is(readyCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("VM did not become ready within %s (%s): %w", timeout, v.timings.Mode, err)
		}
		tail := v.h.consoleTail()
		closeCtx, c := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer c()
		_ = v.h.close(closeCtx)
		if tail == "" {
			tail = "(none)"
		}
		return nil, fmt.Errorf("%w\nlast console lines:\n%s", err, tail)
	}
	return v, nil
}

// pickState finds and checks the state to restore and settles the memory size.
func pickState(img *Image, statePath string, mem int, v86ver string, logger *slog.Logger) (string, int, error) {
	if statePath == "" {
		if mem == 0 {
			mem = manifest.DefaultMemoryMB
		}
		statePath = img.StatePath(mem)
		if _, err := os.Stat(statePath); errors.Is(err, fs.ErrNotExist) {
			return "", 0, fmt.Errorf("no snapshot for %d MB in %s: run pgwasm image snapshot --image %s --memory %d (or use --full-boot)",
				mem, img.Dir, img.Dir, mem)
		}
	}
	meta, err := manifest.ReadState(statePath)
	switch {
	case err == nil:
		if mem == 0 {
			mem = meta.MemoryMB
		}
		if err := checkMeta(meta, img, mem, v86ver); err != nil {
			return "", 0, fmt.Errorf("%s: %w", statePath, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		logger.Warn("state has no metadata: cannot check that it belongs to this image", "state", statePath)
	default:
		return "", 0, err
	}
	memBytes, err := inspectState(statePath)
	if err != nil {
		return "", 0, err
	}
	if mem == 0 {
		mem = int(memBytes >> 20)
	}
	if memBytes != int64(mem)<<20 {
		return "", 0, fmt.Errorf("state %s holds %d MB of memory, not %d MB: use --memory %d", statePath, memBytes>>20, mem, memBytes>>20)
	}
	return statePath, mem, nil
}

func (v *VM) since() int64 { return time.Since(v.t0).Milliseconds() }

func (v *VM) onEvent(name string, _ map[string]json.RawMessage) {
	if name == "agent_ready" {
		v.logger.Debug("agent ready", "ms", v.since())
	}
}

// boot starts the emulator and waits for the agent and PostgreSQL.
func (v *VM) boot(ctx context.Context, harnessDir string, files BootFiles, statePath, relayURL string) error {
	if err := v.startEmulator(ctx, harnessDir, files, statePath, relayURL, v.channel); err != nil {
		return err
	}

	waitMS := harnessTimeout(ctx, time.Minute)
	msg, err := v.h.call(ctx, "wait_agent", map[string]any{"timeout_ms": waitMS})
	if err != nil {
		return err
	}
	var harnessTimings map[string]int64
	_ = json.Unmarshal(msg["timings"], &harnessTimings)
	_ = json.Unmarshal(msg["protocol"], &v.protocol)
	v.mu.Lock()
	v.timings.AgentReady = v.since()
	v.timings.Harness = harnessTimings
	v.mu.Unlock()

	if statePath != "" {
		// The guest clock stopped when the state was saved. A VM whose
		// clock cannot be set does not start (docs/agent-protocol.md,
		// "After a restore"): now() and every timestamp written would be
		// the save's, silently.
		if _, err := v.Request(ctx, map[string]any{"op": "set_time", "unix_ms": time.Now().UnixMilli()}); err != nil {
			return fmt.Errorf("cannot set the VM's clock after the restore (it would stay at the moment the state was saved): %w", err)
		}
	}
	// Every VM restored from one state starts with the same kernel random
	// generator (and a full boot in v86 has little entropy): mix in ours
	// before anything draws keys.
	entropy := make([]byte, 32)
	if _, err := rand.Read(entropy); err != nil {
		return fmt.Errorf("cannot draw entropy for the guest: %w", err)
	}
	if _, err := v.Request(ctx, map[string]any{"op": "add_entropy", "entropy": entropy}); err != nil {
		return fmt.Errorf("cannot seed the guest's random generator: %w", err)
	}
	if err := v.waitPostgres(ctx); err != nil {
		return err
	}
	v.mu.Lock()
	v.timings.PostgresReady = v.since()
	v.mu.Unlock()
	return nil
}

// waitPostgres polls the agent's status until PostgreSQL accepts queries.
func (v *VM) waitPostgres(ctx context.Context) error {
	for {
		raw, err := v.Request(ctx, map[string]any{"op": "status"})
		if err != nil {
			return fmt.Errorf("agent status: %w", err)
		}
		var st struct {
			Postgres string `json:"postgres"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("agent status: %w", err)
		}
		if st.Postgres == "ready" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("PostgreSQL still %q: %w", st.Postgres, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// harnessTimeout is the limit (ms) for a harness-side wait: a little past
// ctx's deadline, so that the Go side's deadline decides and its error names
// the timeout; def when ctx has none.
func harnessTimeout(ctx context.Context, def time.Duration) int64 {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl).Milliseconds(), 0) + 2000
	}
	return def.Milliseconds()
}

// Request sends one agent request (an object with "op" and its fields; the id
// is set here) and returns the whole response. A response with ok=false is an
// *SQLError when it carries a SQLSTATE, an *AgentError otherwise.
func (v *VM) Request(ctx context.Context, req map[string]any) (json.RawMessage, error) {
	return v.RequestOn(ctx, v.channel, req)
}

// RequestOn is Request on a given agent channel (manifest.ChannelSerial or
// manifest.ChannelVirtioConsole): to compare them, or to check the one a page uses.
func (v *VM) RequestOn(ctx context.Context, channel string, req map[string]any) (json.RawMessage, error) {
	return v.requestOn(ctx, channel, req, nil)
}

// requestOn is RequestOn with rows streamed to st (nil: not streamed).
func (v *VM) requestOn(ctx context.Context, channel string, req map[string]any, st *streamed) (json.RawMessage, error) {
	timeoutMS := harnessTimeout(ctx, 10*time.Minute)
	fields := map[string]any{"request": req, "timeout_ms": timeoutMS, "channel": channel}
	var onPart func(map[string]json.RawMessage)
	if st != nil {
		fields["stream"] = map[string]any{"chunk_bytes": st.chunkBytes, "max_bytes": st.maxBytes}
		onPart = st.add
	}
	msg, err := v.h.callParts(ctx, "agent", fields, onPart)
	if err != nil {
		return nil, err
	}
	if st != nil && st.err != nil {
		return nil, st.err
	}
	raw := msg["response"]
	var head struct {
		OK bool `json:"ok"`
		SQLError
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, fmt.Errorf("agent response: %w", err)
	}
	if !head.OK {
		if head.SQLState != "" {
			e := head.SQLError
			return raw, &e
		}
		op, _ := req["op"].(string)
		return raw, &AgentError{Op: op, Message: head.Message}
	}
	return raw, nil
}

// Query runs one statement with optional parameters ($1, $2, ...). Parameters
// are sent as text: strings as they are, []byte as a string, nil as NULL and
// anything else formatted with fmt.
func (v *VM) Query(ctx context.Context, sql string, params ...any) (*Result, error) {
	req := map[string]any{"op": "query", "sql": sql}
	if len(params) > 0 {
		ps := make([]*string, len(params))
		for i, p := range params {
			var s string
			switch p := p.(type) {
			case nil:
				continue
			case string:
				s = p
			case []byte:
				s = string(p)
			default:
				s = fmt.Sprint(p)
			}
			ps[i] = &s
		}
		req["params"] = ps
	}
	st := v.stream()
	raw, err := v.requestOn(ctx, v.channel, req, st)
	if err != nil {
		return nil, err
	}
	var res Result
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("query result: %w", err)
	}
	if st != nil {
		res.Rows = append(st.rows(0), res.Rows...)
	}
	v.markQuery()
	return &res, nil
}

// StreamChunkBytes is the size of the parts a streamed result comes in
// (docs/agent-protocol.md, "Streamed results").
const StreamChunkBytes = 256 << 10

// stream returns the assembler for a query's or exec's parts, nil when
// the agent does not stream (protocol 1): its result is then one message.
func (v *VM) stream() *streamed {
	if v.protocol < 2 {
		return nil
	}
	return &streamed{chunkBytes: StreamChunkBytes}
}

// streamed gathers the rows of a streamed result's parts, per statement.
// add runs on the harness's reader goroutine, before the answer is handed
// over, so the caller reads the rows without a lock.
type streamed struct {
	chunkBytes int
	maxBytes   int64 // 0: no cap
	parts      [][][]*string
	n          int // parts received
	err        error
}

func (s *streamed) add(ev map[string]json.RawMessage) {
	var p struct {
		Statement int         `json:"statement"`
		Rows      [][]*string `json:"rows"`
	}
	if err := json.Unmarshal(ev["rows"], &p.Rows); err != nil {
		s.err = fmt.Errorf("streamed result part: %w", err)
		return
	}
	_ = json.Unmarshal(ev["statement"], &p.Statement)
	if p.Statement < 0 || p.Statement > 1<<20 {
		s.err = fmt.Errorf("streamed result part for statement %d", p.Statement)
		return
	}
	for len(s.parts) <= p.Statement {
		s.parts = append(s.parts, nil)
	}
	s.parts[p.Statement] = append(s.parts[p.Statement], p.Rows...)
	s.n++
}

// rows returns statement k's rows from the parts.
func (s *streamed) rows(k int) [][]*string {
	if k < len(s.parts) {
		return s.parts[k]
	}
	return nil
}

// Exec runs any number of statements (simple protocol) and returns one result
// per statement.
func (v *VM) Exec(ctx context.Context, sql string) ([]Result, error) {
	st := v.stream()
	raw, err := v.requestOn(ctx, v.channel, map[string]any{"op": "exec", "sql": sql}, st)
	if err != nil {
		return nil, err
	}
	var res struct {
		Results []Result `json:"results"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("exec result: %w", err)
	}
	if st != nil {
		for k := range res.Results {
			res.Results[k].Rows = append(st.rows(k), res.Results[k].Rows...)
		}
	}
	v.markQuery()
	return res.Results, nil
}

func (v *VM) markQuery() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.timings.FirstQuery == 0 {
		v.timings.FirstQuery = v.since()
	}
}

// Console writes text to the psql console (ttyS0) and returns its output until
// the regular expression until matches (at once when until is empty).
func (v *VM) Console(ctx context.Context, write, until string, timeout time.Duration) (string, error) {
	msg, err := v.h.call(ctx, "console", map[string]any{"write": write, "until": until, "timeout_ms": timeout.Milliseconds()})
	if err != nil {
		return "", err
	}
	var out string
	_ = json.Unmarshal(msg["output"], &out)
	return out, nil
}

// Stats returns what the harness measured: 9p blobs loaded, phases, console.
func (v *VM) Stats(ctx context.Context) (*Stats, error) {
	msg, err := v.h.call(ctx, "stats", nil)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	var st Stats
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	return &st, nil
}

// Timings returns the phases measured so far, with the harness's own.
func (v *VM) Timings() Timings {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.timings
	return t
}

// AgentChannel is the agent channel Request uses.
func (v *VM) AgentChannel() string { return v.channel }

// Image is the image the VM runs; nil for a VM started with Boot.
func (v *VM) Image() *Image { return v.img }

// Close stops the VM and its Node process.
func (v *VM) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return v.h.close(ctx)
}
