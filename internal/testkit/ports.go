// Package testkit holds what the repository's tests and benchmarks share to
// set up real processes on loopback: free ports today (issue #15 gathers
// the rest here).
package testkit

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// Ports are drawn below Linux's default ephemeral range (32768-60999): a
// port the kernel handed out with port 0 and that was closed again can be
// taken by any outgoing connection before the test's server binds it; one
// below the range is taken only by another listener.
const (
	lowPort  = 20000
	highPort = 32000
	tries    = 200
)

// FindRange returns the first of n consecutive ports that were free on host
// (an IP address) a moment ago. Another process can still bind one before
// the caller does: callers fail loudly then.
func FindRange(host string, n int) (int, error) {
	if n < 1 || n > highPort-lowPort {
		return 0, fmt.Errorf("cannot look for %d consecutive ports", n)
	}
	var last error
	for range tries {
		first := lowPort + rand.IntN(highPort-lowPort-n+1)
		if err := probe(host, first, n); err != nil {
			last = err
			continue
		}
		return first, nil
	}
	return 0, fmt.Errorf("no %d consecutive free ports on %s between %d and %d after %d tries: %w", n, host, lowPort, highPort, tries, last)
}

// probe binds each port of the range and lets it go again.
func probe(host string, first, n int) error {
	for p := first; p < first+n; p++ {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		if err := l.Close(); err != nil {
			return err
		}
	}
	return nil
}

// FreeRange is FindRange for tests: first and last port of the range.
func FreeRange(tb testing.TB, host string, n int) (first, last int) {
	tb.Helper()
	first, err := FindRange(host, n)
	if err != nil {
		tb.Fatal(err)
	}
	return first, first + n - 1
}

// FreePort returns one free port on host.
func FreePort(tb testing.TB, host string) int {
	tb.Helper()
	p, _ := FreeRange(tb, host, 1)
	return p
}

// FreePorts returns n distinct free ports on host, not necessarily
// consecutive.
func FreePorts(tb testing.TB, host string, n int) []int {
	tb.Helper()
	seen := map[int]bool{}
	var ports []int
	for len(ports) < n {
		p := FreePort(tb, host)
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports
}
