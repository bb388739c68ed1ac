package pgtest

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/testkit"
)

// Direct17 stands in for a PostgreSQL 17 server in front of the host's
// PostgreSQL 15, which cannot take direct TLS (sslnegotiation=direct): it
// listens on loopback and, when a connection starts with a TLS record, sends
// PostgreSQL 15 an SSLRequest first, then passes the ClientHello on. Other
// connections pass through untouched. It returns its address.
func Direct17(tb testing.TB, pgAddr string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	testkit.ServeConns(tb, ln, func(c net.Conn) { direct17(c, pgAddr) })
	return ln.Addr().String()
}

func direct17(c net.Conn, pgAddr string) {
	defer c.Close()
	pg, err := net.DialTimeout("tcp", pgAddr, 5*time.Second)
	if err != nil {
		return
	}
	defer pg.Close()
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		return
	}
	if first[0] == 0x16 {
		pg.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}) // SSLRequest
		var b [1]byte
		if _, err := io.ReadFull(pg, b[:]); err != nil || b[0] != 'S' {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		io.Copy(pg, br)
		pg.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, pg)
	c.(*net.TCPConn).CloseWrite()
	<-done
}
