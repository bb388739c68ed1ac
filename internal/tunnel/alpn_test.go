package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// pg17Guest behaves like PostgreSQL 17 at the start: an SSLRequest gets
// 'S' and TLS; a direct TLS start is taken only with ALPN "postgresql"
// (PostgreSQL 17 closes it otherwise). The guest writes what it saw.
func pg17Guest(t testing.TB, cert tls.Certificate) func(ctx context.Context, port uint16) (net.Conn, error) {
	return func(ctx context.Context, port uint16) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			br := bufio.NewReader(b)
			first, err := br.Peek(1)
			if err != nil {
				return
			}
			start := "direct"
			if first[0] != 0x16 {
				var req [8]byte
				if _, err := io.ReadFull(br, req[:]); err != nil || !bytes.Equal(req[:], sslRequest()) {
					return
				}
				b.Write([]byte{'S'})
				start = "classic"
			}
			conn := &peekedConn{Conn: b, r: br}
			tc := tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"postgresql"}})
			if err := tc.Handshake(); err != nil {
				return
			}
			if start == "direct" && tc.ConnectionState().NegotiatedProtocol != "postgresql" {
				return // PostgreSQL 17: direct TLS without ALPN is refused
			}
			tc.Write([]byte(start))
			tc.Close()
		}()
		return a, nil
	}
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestSNIDirectHelloWithoutALPN: a ClientHello at byte 0 without ALPN
// "postgresql" is what the cluster's HAProxy forwards for libpq before 17
// (it answers the SSLRequest itself, deploy/haproxy); the tunnel must ask
// the VM for TLS the classic way then, since PostgreSQL 17 refuses direct
// TLS without that ALPN. With the ALPN, the hello still goes as is.
func TestSNIDirectHelloWithoutALPN(t *testing.T) {
	cert, err := selfSignedCert("guest")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, nil)
	f.reg2.add(&funcSession{id: "alpn1", dial: pg17Guest(t, cert), done: make(chan struct{})})
	for _, tc := range []struct {
		alpn []string
		want string
	}{
		{[]string{"postgresql"}, "direct"},
		{nil, "classic"},
	} {
		c, err := net.DialTimeout("tcp", f.sni, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		cl := tls.Client(c, &tls.Config{ServerName: "alpn1.pg.localhost", InsecureSkipVerify: true, NextProtos: tc.alpn})
		got, err := io.ReadAll(cl)
		c.Close()
		if string(got) != tc.want {
			t.Errorf("direct hello with ALPN %v: guest saw %q (%v), want %q", tc.alpn, got, err, tc.want)
		}
	}
}
