package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// byteGuest answers the SSLRequest, then reads the ClientHello and answers
// one byte: what the tunnel costs without any TLS or PostgreSQL work.
func byteGuest(hello []byte) func(ctx context.Context, port uint16) (net.Conn, error) {
	return func(ctx context.Context, port uint16) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			var req [8]byte
			if _, err := io.ReadFull(b, req[:]); err != nil || !bytes.Equal(req[:], sslRequest()) {
				return
			}
			b.Write([]byte{'S'})
			got := make([]byte, len(hello))
			if _, err := io.ReadFull(b, got); err != nil {
				return
			}
			b.Write([]byte{'!'})
		}()
		return a, nil
	}
}

// BenchmarkSetup measures connection setup through the tunnel on loopback:
// accept, (SNI: read SSLRequest and ClientHello, route), dial the guest,
// send the SSLRequest and the ClientHello, first byte back.
func BenchmarkSetup(b *testing.B) {
	hello, err := os.ReadFile("testdata/hello-go-direct.bin")
	if err != nil {
		b.Fatal(err)
	}
	f := newFixture(b, nil)
	s := &funcSession{id: "bench1", dial: byteGuest(hello), done: make(chan struct{})}
	f.reg2.add(s)
	port, err := f.tun.Attach(context.Background(), s)
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct{ name, addr string }{
		{"port", fmt.Sprintf("127.0.0.1:%d", port)},
		{"sni", f.sni},
	} {
		b.Run(mode.name, func(b *testing.B) {
			// The SNI hello names the session; port mode passes it untouched.
			h := bytes.Replace(hello, []byte("s0me1d"), []byte("bench1"), 1)
			for b.Loop() {
				c, err := net.Dial("tcp", mode.addr)
				if err != nil {
					b.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Write(sslRequest())
				var one [1]byte
				if _, err := io.ReadFull(c, one[:]); err != nil || one[0] != 'S' {
					b.Fatalf("SSLRequest answer %q, %v", one[0], err)
				}
				c.Write(h)
				if _, err := io.ReadFull(c, one[:]); err != nil || one[0] != '!' {
					b.Fatalf("guest answer %q, %v", one[0], err)
				}
				c.Close()
			}
		})
	}
}
