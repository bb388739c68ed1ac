package testkit

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestServeConnsClosesAtCleanup checks both halves of the contract: each
// connection gets its handler, and a handler blocked on a silent peer is
// released when the test that started the loop ends.
func TestServeConnsClosesAtCleanup(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 1)
	var client net.Conn
	t.Run("inner", func(t *testing.T) {
		ServeConns(t, ln, func(c net.Conn) {
			if _, err := c.Write([]byte("hi")); err != nil {
				released <- err
				return
			}
			// The client never writes: only the cleanup ends this read.
			_, err := io.ReadAll(c)
			released <- err
		})
		client, err = net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "hi" {
			t.Fatalf("handler greeting: %q, %v", buf, err)
		}
	})
	defer client.Close()
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was still blocked after the test's cleanup")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("the listener still accepts after the test's cleanup")
	}
}
