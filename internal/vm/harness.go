package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pgwasm/pgwasm/internal/hostexec"
)

// FindHarness returns the harness directory: dir when given, else the first
// harness/ with vm.mjs found walking up from the working directory and from
// the executable (build/bin/pgwasm sits two levels below the checkout). It
// checks that the npm modules are installed.
func FindHarness(dir string) (string, error) {
	if dir == "" {
		var starts []string
		if wd, err := os.Getwd(); err == nil {
			starts = append(starts, wd)
		}
		if exe, err := os.Executable(); err == nil {
			if exe, err := filepath.EvalSymlinks(exe); err == nil {
				starts = append(starts, filepath.Dir(exe))
			}
		}
	search:
		for _, s := range starts {
			for d := s; ; d = filepath.Dir(d) {
				if _, err := os.Stat(filepath.Join(d, "harness", "vm.mjs")); err == nil {
					dir = filepath.Join(d, "harness")
					break search
				}
				if filepath.Dir(d) == d {
					break
				}
			}
		}
		if dir == "" {
			return "", errors.New("cannot find the Node harness (harness/vm.mjs) above the working directory or the pgwasm binary: run from the checkout or set --harness (PGWASM_HARNESS)")
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("harness dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(abs, "vm.mjs")); err != nil {
		return "", fmt.Errorf("harness dir %s has no vm.mjs: %w", abs, err)
	}
	if _, err := os.Stat(filepath.Join(abs, "node_modules", "v86", "package.json")); err != nil {
		return "", fmt.Errorf("harness in %s is not installed (no node_modules/v86): run make setup", abs)
	}
	return abs, nil
}

// v86Version reads the installed v86 version: a state is only known to
// restore with the v86 that saved it.
func v86Version(harnessDir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(harnessDir, "node_modules", "v86", "package.json"))
	if err != nil {
		return "", fmt.Errorf("cannot read v86 version: %w", err)
	}
	var pkg struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(data, &pkg); err != nil {
		return "", fmt.Errorf("v86 package.json: %w", err)
	}
	return pkg.Version, nil
}

// harness is one running `node vm.mjs` process and its line protocol.
type harness struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	logger *slog.Logger

	writeMu sync.Mutex
	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan map[string]json.RawMessage
	// parts gets the "agent_part" events of a streamed agent command, by
	// the command's id; called on the reader goroutine, in order, before
	// the command's answer.
	parts   map[int64]func(map[string]json.RawMessage)
	console []string // last console lines, for error messages
	onEvent func(name string, ev map[string]json.RawMessage)
	// onConsole, if set, gets every whole line the guest prints on ttyS0.
	onConsole func(line string)

	done    chan struct{} // closed when the process's stdout ends
	waitErr error
}

const consoleKeep = 30

// startHarness starts `node vm.mjs` in dir. The process outlives ctx (ctx
// only bounds the start): close stops it. onConsole may be nil; it is
// called from the reader goroutine and must not block.
func startHarness(ctx context.Context, node, dir string, logger *slog.Logger, onEvent func(string, map[string]json.RawMessage), onConsole func(string)) (*harness, error) {
	// Through hostexec like every program the image tools start: it refuses
	// a node built for another machine with a message naming it.
	cmd, err := hostexec.Command(context.WithoutCancel(ctx), node, filepath.Join(dir, "vm.mjs"))
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("node (%s) not found: install Node.js 20 or newer (make setup): %w", node, err)
	}
	if err != nil {
		return nil, err
	}
	cmd.Dir = dir
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("harness stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("harness stdout: %w", err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("harness stderr: %w", err)
	}
	h := &harness{
		cmd:       cmd,
		stdin:     stdin,
		logger:    logger,
		pending:   map[int64]chan map[string]json.RawMessage{},
		parts:     map[int64]func(map[string]json.RawMessage){},
		onEvent:   onEvent,
		onConsole: onConsole,
		done:      make(chan struct{}),
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", node, err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); h.readStdout(stdout) }()
	go func() { defer readers.Done(); h.readStderr(stderr) }()
	go func() {
		readers.Wait()
		err := cmd.Wait()
		h.mu.Lock()
		h.waitErr = err
		h.mu.Unlock()
		close(h.done)
	}()
	return h, nil
}

func (h *harness) readStdout(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	for sc.Scan() {
		var msg map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			h.logger.Warn("harness: line is not JSON", "line", truncate(sc.Text(), 200))
			continue
		}
		if ev, ok := msg["event"]; ok {
			var name string
			_ = json.Unmarshal(ev, &name)
			if name == "agent_part" {
				var id int64
				_ = json.Unmarshal(msg["cmd_id"], &id)
				h.mu.Lock()
				f := h.parts[id]
				h.mu.Unlock()
				if f != nil {
					f(msg)
				}
				continue
			}
			h.logger.Debug("harness event", "event", name)
			if h.onEvent != nil {
				h.onEvent(name, msg)
			}
			continue
		}
		var id int64
		_ = json.Unmarshal(msg["id"], &id)
		h.mu.Lock()
		ch := h.pending[id]
		delete(h.pending, id)
		h.mu.Unlock()
		if ch == nil {
			h.logger.Debug("harness: answer to a request given up", "line", truncate(sc.Text(), 200))
			continue
		}
		ch <- msg
	}
}

// readStderr logs the harness's own lines and keeps the last console lines.
func (h *harness) readStderr(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if c, ok := strings.CutPrefix(line, "console: "); ok {
			h.mu.Lock()
			h.console = append(h.console, c)
			if len(h.console) > consoleKeep {
				h.console = h.console[len(h.console)-consoleKeep:]
			}
			h.mu.Unlock()
			h.logger.Debug("console", "line", c)
			if h.onConsole != nil {
				h.onConsole(c)
			}
			continue
		}
		h.logger.Debug("harness", "line", line)
	}
}

// consoleTail returns the last console lines the guest printed.
func (h *harness) consoleTail() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.console, "\n")
}

// call sends one command and waits for its answer. fields must not set "id"
// or "cmd". An answer with ok=false becomes an error carrying its message.
func (h *harness) call(ctx context.Context, cmd string, fields map[string]any) (map[string]json.RawMessage, error) {
	return h.callParts(ctx, cmd, fields, nil)
}

// callParts is call with onPart getting the command's "agent_part" events.
func (h *harness) callParts(ctx context.Context, cmd string, fields map[string]any, onPart func(map[string]json.RawMessage)) (map[string]json.RawMessage, error) {
	h.mu.Lock()
	h.nextID++
	id := h.nextID
	ch := make(chan map[string]json.RawMessage, 1)
	h.pending[id] = ch
	if onPart != nil {
		h.parts[id] = onPart
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.parts, id)
		h.mu.Unlock()
	}()

	req := map[string]any{"id": id, "cmd": cmd}
	for k, v := range fields {
		req[k] = v
	}
	line, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("harness %s: %w", cmd, err)
	}
	h.writeMu.Lock()
	_, err = h.stdin.Write(append(line, '\n'))
	h.writeMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("harness %s: cannot write: %w (harness exited: %v)", cmd, err, h.exitErr())
	}
	select {
	case msg := <-ch:
		var ok bool
		_ = json.Unmarshal(msg["ok"], &ok)
		if !ok {
			var e string
			_ = json.Unmarshal(msg["error"], &e)
			return msg, fmt.Errorf("harness %s: %s", cmd, e)
		}
		return msg, nil
	case <-h.done:
		return nil, fmt.Errorf("harness %s: node exited: %v", cmd, h.exitErr())
	case <-ctx.Done():
		h.mu.Lock()
		delete(h.pending, id)
		h.mu.Unlock()
		return nil, fmt.Errorf("harness %s: %w", cmd, ctx.Err())
	}
}

func (h *harness) exitErr() error {
	select {
	case <-h.done:
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.waitErr == nil {
			return errors.New("exit status 0")
		}
		return h.waitErr
	default:
		return nil
	}
}

// close asks the harness to stop, then kills it if it lingers past ctx.
func (h *harness) close(ctx context.Context) error {
	_, _ = h.call(ctx, "stop", nil) // the process may exit before answering
	h.stdin.Close()
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		_ = h.cmd.Process.Kill()
		<-h.done
		return fmt.Errorf("harness did not stop, killed: %w", ctx.Err())
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
