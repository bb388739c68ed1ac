package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal pair; the agent's end behaves like the
// guest's ttyS1 (a tty in cooked mode until makeRaw).
func openPTY(t *testing.T) (master *os.File, slavePath string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	return m, fmt.Sprintf("/dev/pts/%d", n)
}

func TestSerialRawMode(t *testing.T) {
	master, slave := openPTY(t)
	f, err := openSerial(slave)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	var tio *unix.Termios
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { tio, err = unix.IoctlGetTermios(int(fd), unix.TCGETS) })
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		set  bool
	}{
		{"ECHO", tio.Lflag&unix.ECHO != 0},
		{"ICANON", tio.Lflag&unix.ICANON != 0},
		{"ISIG", tio.Lflag&unix.ISIG != 0},
		{"ICRNL", tio.Iflag&unix.ICRNL != 0},
		{"IXON", tio.Iflag&unix.IXON != 0},
		{"OPOST", tio.Oflag&unix.OPOST != 0},
		{"PARENB", tio.Cflag&unix.PARENB != 0},
	} {
		if c.set {
			t.Errorf("%s still set after makeRaw", c.name)
		}
	}
	if tio.Cflag&unix.CSIZE != unix.CS8 {
		t.Errorf("character size is not 8 bits")
	}

	// The protocol over the pty: no echo, no CR/LF translation, and bytes
	// that a cooked tty would act on (^C, ^D, ^S, DEL) arrive as they are.
	srv := newTestServer(t, &fakeDB{}, &testEnv{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.serve(ctx, f) }()

	r := bufio.NewReader(master)
	master.SetReadDeadline(time.Now().Add(10 * time.Second))
	readLine := func() string {
		t.Helper()
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading from the pty: %v (got %q)", err, line)
		}
		return line
	}
	if got := readLine(); !strings.HasPrefix(got, `{"event":"ready"`) || strings.HasSuffix(got, "\r\n") {
		t.Fatalf("first line %q, want the ready event ending in a bare LF", got)
	}
	if _, err := master.WriteString("{\"id\":2,\"op\":\"x\x03\x04\x13\"}\n"); err != nil {
		t.Fatal(err)
	}
	if got := readLine(); !strings.Contains(got, `invalid character '\\x03'`) {
		t.Errorf("answer %q, want a complaint about the raw ^C", got)
	}
	if _, err := master.WriteString("{\"id\":3,\"op\":\"query\",\"sql\":\"x\",\"params\":[\"a\x7fb\\r\"]}\n"); err != nil {
		t.Fatal(err)
	}
	if got := readLine(); !strings.HasPrefix(got, `{"id":3,"ok":true`) || !strings.Contains(got, "\"rows\":[[\"a\x7fb\\r\"]]") {
		t.Errorf("answer %q, want the parameter echoed back unchanged", got)
	}
	cancel()
	f.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("serve did not stop after the device was closed")
	}
}

// TestRun starts the whole agent as main does, on a pty standing in for
// ttyS1, against a real PostgreSQL.
func TestRun(t *testing.T) {
	pg := pgtest.Start(t)
	master, slave := openPTY(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs strings.Builder
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-serial", slave, "-pg-socket-dir", pg.Dir, "-pg-port", fmt.Sprint(pg.Port), "-v"}, &lockedWriter{w: &logs})
	}()
	r := bufio.NewReader(master)
	master.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, `{"event":"ready","version":"2`) {
		t.Fatalf("first line %q (%v), want the ready event", line, err)
	}
	if _, err := master.WriteString(`{"id":1,"op":"query","sql":"SELECT current_user"}` + "\n"); err != nil {
		t.Fatal(err)
	}
	line, err = r.ReadString('\n')
	if err != nil || !strings.Contains(line, `"rows":[["postgres"]]`) {
		t.Fatalf("answer %q (%v), want postgres as current_user", line, err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("run returned %d, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// set_winsize sets the console terminal's size with the real ioctl (on a
// pty standing in for ttyS0) and refuses sizes no screen has.
func TestSetWinsize(t *testing.T) {
	master, slave := openPTY(t)
	srv := newTestServer(t, &fakeDB{}, &testEnv{})
	a := startAgent(t, srv)

	resp := a.call(map[string]any{"id": 1, "op": "set_winsize", "rows": 40, "cols": 132})
	if resp["ok"] != false || !strings.Contains(fmt.Sprint(resp["error"]), "no console") {
		t.Errorf("without -console: %v, want a clear error", resp)
	}

	srv.sys.console = slave
	mustOK(t, a.call(map[string]any{"id": 2, "op": "set_winsize", "rows": 40, "cols": 132}))
	ws, err := unix.IoctlGetWinsize(int(master.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Row != 40 || ws.Col != 132 {
		t.Errorf("terminal size = %dx%d, want 40x132", ws.Row, ws.Col)
	}

	for i, bad := range []map[string]any{{"rows": 0, "cols": 80}, {"rows": 24, "cols": 5000}, {"rows": 24}} {
		req := map[string]any{"id": 10 + i, "op": "set_winsize"}
		for k, v := range bad {
			req[k] = v
		}
		if resp := a.call(req); resp["ok"] != false || !strings.Contains(fmt.Sprint(resp["error"]), "rows and cols") {
			t.Errorf("%v: %v, want a refusal", bad, resp)
		}
	}
	if ws, _ := unix.IoctlGetWinsize(int(master.Fd()), unix.TIOCGWINSZ); ws.Row != 40 || ws.Col != 132 {
		t.Errorf("a refused request changed the size to %dx%d", ws.Row, ws.Col)
	}
}
