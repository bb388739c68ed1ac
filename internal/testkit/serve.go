package testkit

import (
	"net"
	"sync"
	"testing"
)

// ServeConns accepts connections on ln until the test ends and runs handle
// for each in its own goroutine. At the end of the test it closes ln and
// every connection still open, then waits for the handlers: a handler
// blocked on a peer that never hangs up (a simulated VM whose relay went
// away sends no RST) would otherwise outlive the test.
func ServeConns(tb testing.TB, ln net.Listener, handle func(net.Conn)) {
	tb.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(c)
			}()
		}
	}()
}
