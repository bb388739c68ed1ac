package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// A host reaches the agent over one of several channels (docs/agent-protocol.md,
// "Channels"): the serial port, which every page and harness knows, and a
// virtio-console port, which moves up to a page per interrupt where the
// serial port moves a byte. The agent has one PostgreSQL session and handles
// one request at a time, so all channels feed the one protocol loop:
// switchboard hands the loop whole lines, one channel's line at a time, and
// sends each answer back on the channel its request came from.
type switchboard struct {
	log    *slog.Logger
	ready  func() any // the announcement each channel sends when it opens
	ports  []*port
	pieces chan piece
	// floor is held by the port whose line is being passed on, so lines
	// from two channels never interleave.
	floor chan struct{}

	// Read and Write are called by the protocol loop only, one at a time.
	cur  *port
	rest []byte
}

// piece is a part of one request line; the last one ends with '\n'.
type piece struct {
	port *port
	data []byte
}

// port is one channel's device.
type port struct {
	path string
	log  *slog.Logger
	mu   sync.Mutex // serialises writes and guards f
	f    *os.File   // nil while the device is not open
}

func newSwitchboard(log *slog.Logger, ready func() any, paths ...string) *switchboard {
	sb := &switchboard{log: log, ready: ready, pieces: make(chan piece), floor: make(chan struct{}, 1)}
	for _, p := range paths {
		sb.ports = append(sb.ports, &port{path: p, log: log.With("channel", p)})
	}
	return sb
}

// start opens every channel and keeps it open until ctx ends: a device that
// is missing or fails is opened again, with growing pauses for one that
// never appears (a v86 started without virtio-console has no /dev/hvc*).
func (sb *switchboard) start(ctx context.Context) {
	for _, p := range sb.ports {
		go sb.keepOpen(ctx, p)
	}
}

func (sb *switchboard) keepOpen(ctx context.Context, p *port) {
	pause := time.Second
	for {
		f, err := openSerial(p.path)
		if err == nil {
			pause = time.Second
			err = sb.serve(ctx, p, f)
		}
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("channel failed; opening it again", "err", err, "in", pause)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 30*time.Second)
	}
}

// serve announces the agent on an open device and passes its lines on
// until a read fails.
func (sb *switchboard) serve(ctx context.Context, p *port, f *os.File) error {
	// Closing the device is the only way to interrupt a blocked read.
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	defer p.setFile(nil)
	defer f.Close()
	// No request from this device has been passed on yet, so no answer
	// can be on its way to it: the announcement cannot split one.
	ready, err := json.Marshal(sb.ready())
	if err != nil {
		return err
	}
	if _, err := f.Write(append(ready, '\n')); err != nil {
		return err
	}
	p.setFile(f)
	p.log.Info("channel open")

	buf := make([]byte, 64<<10)
	held := false
	for {
		n, err := f.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			end := bytes.IndexByte(data, '\n') + 1
			if end == 0 {
				end = len(data)
			}
			if !held {
				if !sb.take(ctx) {
					return ctx.Err()
				}
				held = true
			}
			if !sb.pass(ctx, piece{p, bytes.Clone(data[:end])}) {
				return ctx.Err()
			}
			if data[end-1] == '\n' {
				sb.release()
				held = false
			}
			data = data[end:]
		}
		if err != nil {
			if held {
				// End the cut line so the next channel's line starts afresh.
				sb.pass(ctx, piece{p, []byte{'\n'}})
				sb.release()
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
}

func (sb *switchboard) take(ctx context.Context) bool {
	select {
	case sb.floor <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (sb *switchboard) release() { <-sb.floor }

func (sb *switchboard) pass(ctx context.Context, pc piece) bool {
	select {
	case sb.pieces <- pc:
		return true
	case <-ctx.Done():
		return false
	}
}

// reader returns the protocol loop's side of the switchboard; ctx ending is
// its end of file.
func (sb *switchboard) reader(ctx context.Context) io.ReadWriter {
	return &loopEnd{sb: sb, ctx: ctx}
}

type loopEnd struct {
	sb  *switchboard
	ctx context.Context
}

// Read hands over the next piece of a line. The loop reads the next line
// only after it has answered the last one, so every write between two
// lines belongs to the channel of the line before.
func (l *loopEnd) Read(b []byte) (int, error) {
	sb := l.sb
	if len(sb.rest) == 0 {
		select {
		case pc := <-sb.pieces:
			sb.cur, sb.rest = pc.port, pc.data
		case <-l.ctx.Done():
			return 0, io.EOF
		}
	}
	n := copy(b, sb.rest)
	sb.rest = sb.rest[n:]
	return n, nil
}

// Write sends the loop's output to the channel of the current request.
// Output before the first request (the loop's own announcement: each channel
// has sent one as it opened) goes nowhere. A failing channel must not stop
// the loop, which serves the others: its error is logged, and its reader
// notices the failure and opens the device again.
func (l *loopEnd) Write(b []byte) (int, error) {
	if p := l.sb.cur; p != nil {
		p.write(b)
	}
	return len(b), nil
}

func (p *port) setFile(f *os.File) {
	p.mu.Lock()
	p.f = f
	p.mu.Unlock()
}

func (p *port) write(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		p.log.Warn("channel closed: answer dropped", "bytes", len(b))
		return
	}
	if _, err := p.f.Write(b); err != nil {
		p.log.Warn("cannot write answer", "err", err)
	}
}
