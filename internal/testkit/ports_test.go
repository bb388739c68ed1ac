package testkit

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeRangeIsFreeAndBelowEphemeral(t *testing.T) {
	first, last := FreeRange(t, "127.0.0.1", 5)
	if last-first != 4 || first < lowPort || last >= highPort {
		t.Fatalf("range %d-%d: want 5 ports within %d-%d", first, last, lowPort, highPort)
	}
	for p := first; p <= last; p++ {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d of the range is not free: %v", p, err)
		}
		l.Close()
	}
}

func TestFindRangeSkipsTakenPorts(t *testing.T) {
	// Hold every port but one of a small window: the search must never
	// return a held one.
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for range 20 {
		p := FreePort(t, "127.0.0.1")
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		held = append(held, l)
	}
	taken := map[int]bool{}
	for _, l := range held {
		taken[l.Addr().(*net.TCPAddr).Port] = true
	}
	for range 200 {
		p := FreePort(t, "127.0.0.1")
		if taken[p] {
			t.Fatalf("FreePort returned %d, which is held", p)
		}
	}
}

func TestFreePortsDistinct(t *testing.T) {
	ports := FreePorts(t, "127.0.0.1", 50)
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d twice in %v", p, ports)
		}
		seen[p] = true
	}
}

func TestFindRangeRejectsBadCounts(t *testing.T) {
	for _, n := range []int{0, -1, highPort} {
		if _, err := FindRange("127.0.0.1", n); err == nil {
			t.Errorf("FindRange(%d): no error", n)
		}
	}
}
