package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

// recordConn records what the guard writes; only Write is used by scan.
type recordConn struct {
	net.Conn
	written bytes.Buffer
}

func (r *recordConn) Write(p []byte) (int, error) { return r.written.Write(p) }

func backendMsg(typ byte, body string) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(body)))
	return append(b, body...)
}

// TestCopyGuardFraming feeds a backend stream in every possible two-piece
// split and checks that only a real CopyInResponse (not a 'G' inside another
// message's body) triggers exactly one CopyFail.
func TestCopyGuardFraming(t *testing.T) {
	stream := bytes.Join([][]byte{
		backendMsg('T', "GGGG\x00"),
		backendMsg('D', "G"),
		backendMsg('G', "\x00\x00\x01\x00\x00"),
		backendMsg('E', "SERROR\x00"),
		backendMsg('Z', "I"),
	}, nil)
	for _, extended := range []bool{false, true} {
		want := backendMsg('f', copyInRefusal+"\x00")
		if extended {
			want = append(want, 'S', 0, 0, 0, 4)
		}
		for cut := 0; cut <= len(stream); cut++ {
			rc := &recordConn{}
			g := &copyGuard{Conn: rc}
			g.extended.Store(extended)
			if err := g.scan(stream[:cut]); err != nil {
				t.Fatal(err)
			}
			if err := g.scan(stream[cut:]); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rc.written.Bytes(), want) {
				t.Fatalf("extended=%v cut=%d: wrote %q, want %q", extended, cut, rc.written.Bytes(), want)
			}
		}
	}
}
