package servetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pgwasm/pgwasm/internal/stack"
)

// ErrExited: the server ended before it was ready.
var ErrExited = errors.New("pgwasm serve exited before it was ready")

// WaitReady waits until path holds the JSON that `pgwasm serve
// --ready-file` writes once it listens, and returns the addresses. It
// gives up with ErrExited when exited closes first (nil: never), and when
// ctx ends.
func WaitReady(ctx context.Context, path string, exited <-chan struct{}) (stack.Addrs, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// serve renames the file into place: whole or absent.
		b, err := os.ReadFile(path)
		if err == nil {
			var a stack.Addrs
			if err := json.Unmarshal(b, &a); err != nil || a.HTTP == "" {
				return a, fmt.Errorf("bad ready file %s: %q", path, b)
			}
			return a, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return stack.Addrs{}, err
		}
		select {
		case <-ctx.Done():
			return stack.Addrs{}, fmt.Errorf("no ready file %s: %w", path, ctx.Err())
		case <-exited:
			return stack.Addrs{}, ErrExited
		case <-tick.C:
		}
	}
}

// Options say how Start runs `pgwasm serve`.
type Options struct {
	// Bin is the pgwasm binary.
	Bin string
	// Args are serve's flags; Start adds --ready-file. Listen on port 0
	// where the address need not be known before (and survive a restart).
	Args []string
	// Env is added to this process's environment (KEY=VALUE).
	Env []string
	// Output takes the server's stdout and stderr; nil: discarded.
	Output io.Writer
}

// startTimeout bounds the wait for the ready file; serve listens within
// milliseconds, but a loaded test machine can be slow to start a process.
const startTimeout = 30 * time.Second

// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// Proc is a running `pgwasm serve` process.
type Proc struct {
	Addrs stack.Addrs
	// URL is the HTTP base URL, http://<Addrs.HTTP>.
	URL string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// Start runs `pgwasm serve` and returns once it listens.
func Start(ctx context.Context, o Options) (*Proc, error) {
	dir, err := os.MkdirTemp("", "pgwasm-serve-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ready := filepath.Join(dir, "ready.json")
	args := append(append([]string{"serve"}, o.Args...), "--ready-file", ready)
	cmd := exec.Command(o.Bin, args...)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout, cmd.Stderr = o.Output, o.Output
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start pgwasm serve: %w", err)
	}
	p := &Proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	wctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if p.Addrs, err = WaitReady(wctx, ready, p.exited); err != nil {
		p.Kill()
		if errors.Is(err, ErrExited) {
			return nil, fmt.Errorf("%w: %v", err, p.err)
		}
		return nil, fmt.Errorf("pgwasm serve did not start: %w", err)
	}
	p.URL = "http://" + p.Addrs.HTTP
	return p, nil
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Exited is closed when the process has ended; Err then tells how.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error (nil: status 0); valid once Exited is
// closed.
func (p *Proc) Err() error { return p.err }

// Stop ends the process as an operator would, with SIGTERM (a graceful
// drain), and with SIGKILL if it is still there after 10 s. It returns the
// exit error.
func (p *Proc) Stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.Kill()
	}
	return p.err
}

// Kill ends the process at once and waits for it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}
