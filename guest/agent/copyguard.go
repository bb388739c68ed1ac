package main

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
)

// copyInRefusal is what a COPY ... FROM STDIN fails with.
const copyInRefusal = "COPY FROM STDIN is not supported by the pgwasm agent; copy the data into the VM and use COPY FROM a file"

// copyGuard watches the backend's messages for CopyInResponse and answers it
// with CopyFail. pgconn's Exec and ExecParams do not handle COPY FROM STDIN:
// without this the server would wait for data forever and so would the
// agent's single protocol loop.
type copyGuard struct {
	net.Conn
	// extended is set before each request: after a failed COPY the server
	// skips extended-protocol messages up to a Sync, which it needs again.
	extended atomic.Bool

	wmu sync.Mutex // keeps our CopyFail out of the middle of pgconn's writes

	// Backend message framing state; only Read touches it.
	hdr  [5]byte
	hdrN int
	skip int
}

func (g *copyGuard) Write(p []byte) (int, error) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	return g.Conn.Write(p)
}

func (g *copyGuard) Read(p []byte) (int, error) {
	n, err := g.Conn.Read(p)
	if werr := g.scan(p[:n]); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

// scan follows the message framing (type byte, int32 length including
// itself) across reads.
func (g *copyGuard) scan(b []byte) error {
	for len(b) > 0 {
		if g.skip > 0 {
			k := min(g.skip, len(b))
			g.skip -= k
			b = b[k:]
			continue
		}
		k := copy(g.hdr[g.hdrN:], b)
		g.hdrN += k
		b = b[k:]
		if g.hdrN < len(g.hdr) {
			return nil
		}
		g.hdrN = 0
		g.skip = max(int(int32(binary.BigEndian.Uint32(g.hdr[1:])))-4, 0)
		if g.hdr[0] == 'G' {
			if err := g.failCopy(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (g *copyGuard) failCopy() error {
	msg := make([]byte, 0, 5+len(copyInRefusal)+1+5)
	msg = append(msg, 'f')
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(copyInRefusal)+1))
	msg = append(msg, copyInRefusal...)
	msg = append(msg, 0)
	if g.extended.Load() {
		msg = append(msg, 'S', 0, 0, 0, 4)
	}
	_, err := g.Write(msg)
	return err
}
