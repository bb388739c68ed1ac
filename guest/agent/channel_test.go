package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Two channels (ptys standing in for ttyS1 and hvc1) feed one protocol
// loop: each announces itself when it opens, and each request is answered
// on its own channel, whole, even when both send at once and one line is
// far longer than a device read.
func TestSwitchboardTwoChannels(t *testing.T) {
	m1, s1 := openPTY(t)
	m2, s2 := openPTY(t)
	srv := newTestServer(t, &fakeDB{}, &testEnv{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sb := newSwitchboard(log, func() any { return srv.ready() }, s1, s2)
	sb.start(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.serve(ctx, sb.reader(ctx)) }()

	readers := []*bufio.Reader{bufio.NewReaderSize(m1, 1<<20), bufio.NewReaderSize(m2, 1<<20)}
	masters := []*os.File{m1, m2}
	for i, r := range readers {
		masters[i].SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, `{"event":"ready"`) {
			t.Fatalf("channel %d: first line %q (%v), want the ready event", i, line, err)
		}
	}

	// 300 KB parameters: many device reads each, sent on both at once.
	var wg sync.WaitGroup
	for i := range masters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 3; n++ {
				param := strings.Repeat(fmt.Sprint(i), 300<<10) + fmt.Sprint(n)
				req, _ := json.Marshal(map[string]any{"id": 10*i + n, "op": "query", "sql": "x", "params": []string{param}})
				if _, err := masters[i].Write(append(req, '\n')); err != nil {
					t.Errorf("channel %d: write: %v", i, err)
					return
				}
				masters[i].SetReadDeadline(time.Now().Add(60 * time.Second))
				line, err := readers[i].ReadString('\n')
				if err != nil {
					t.Errorf("channel %d: read: %v", i, err)
					return
				}
				var resp struct {
					ID   int         `json:"id"`
					OK   bool        `json:"ok"`
					Rows [][]*string `json:"rows"`
				}
				if err := json.Unmarshal([]byte(line), &resp); err != nil {
					t.Errorf("channel %d: answer is not JSON (%v): %.200q", i, err, line)
					return
				}
				if resp.ID != 10*i+n || !resp.OK || len(resp.Rows) != 1 || resp.Rows[0][0] == nil || *resp.Rows[0][0] != param {
					t.Errorf("channel %d request %d: got id %d ok %v, want its own parameter back", i, n, resp.ID, resp.OK)
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("the loop did not stop when its context ended")
	}
}
