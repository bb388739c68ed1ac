package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The socket channel's frames (docs/socket-protocol.md). A frame is a
// 7-byte header (type, connection id, payload length, big-endian) and its
// payload. Zero bytes between frames are padding: a run of them resynchronises
// a reader that lost its place (after a state restore, or garbage).
const (
	frameHello  byte = 1 // host: start a session (closes every connection); agent: its answer
	frameOpen   byte = 2 // host: open a connection to PostgreSQL
	frameOpened byte = 3 // agent: the connection is open
	frameData   byte = 4 // both: bytes of a connection
	frameWindow byte = 5 // both: the receiver may be sent this many more bytes
	frameShut   byte = 6 // host: no more bytes from the page (half-close)
	frameClose  byte = 7 // both: the connection is gone; payload: the reason, UTF-8 (empty: a normal end)

	spliceVersion = 1
	frameHeader   = 7
	// maxFramePayload lets a whole frame fit in one 4 KiB receive buffer of
	// the virtio-console port, so one frame is one interrupt.
	maxFramePayload = 4096 - frameHeader
	// syncZeros zero bytes in a row end a reader's hunt for a frame start.
	syncZeros = 16
	// syncRun is what a sender writes before its hello: longer than any
	// frame, so a reader stuck in a stale frame's payload gets past it and
	// still sees syncZeros zeros.
	syncRun = 8192
)

// errFrame marks a stream that is not a valid frame sequence.
var errFrame = errors.New("socket channel protocol error")

type frame struct {
	typ     byte
	conn    uint32
	payload []byte
}

// appendFrame encodes f after b.
func appendFrame(b []byte, f frame) []byte {
	b = append(b, f.typ)
	b = binary.BigEndian.AppendUint32(b, f.conn)
	b = binary.BigEndian.AppendUint16(b, uint16(len(f.payload)))
	return append(b, f.payload...)
}

// frameReader parses frames. It starts hunting: it skips bytes until it has
// seen syncZeros zeros in a row, because the bytes already on the device
// may start in the middle of a frame (a restored VM). After a protocol
// error it hunts again.
type frameReader struct {
	r       *bufio.Reader
	hunting bool
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 16<<10), hunting: true}
}

// next returns the next frame; its payload is valid until the next call.
// An error wrapping errFrame is recoverable: the reader hunts for the next
// sync run. Any other error is the device's.
func (fr *frameReader) next(buf []byte) (frame, error) {
	if fr.hunting {
		zeros := 0
		for zeros < syncZeros {
			c, err := fr.r.ReadByte()
			if err != nil {
				return frame{}, err
			}
			if c == 0 {
				zeros++
			} else {
				zeros = 0
			}
		}
		fr.hunting = false
	}
	var typ byte
	for {
		c, err := fr.r.ReadByte()
		if err != nil {
			return frame{}, err
		}
		if c != 0 {
			typ = c
			break
		}
	}
	if typ < frameHello || typ > frameClose {
		fr.hunting = true
		return frame{}, fmt.Errorf("%w: unknown frame type %d", errFrame, typ)
	}
	var h [frameHeader - 1]byte
	if _, err := io.ReadFull(fr.r, h[:]); err != nil {
		return frame{}, err
	}
	f := frame{typ: typ, conn: binary.BigEndian.Uint32(h[0:4])}
	n := int(binary.BigEndian.Uint16(h[4:6]))
	if n > maxFramePayload {
		fr.hunting = true
		return frame{}, fmt.Errorf("%w: frame of %d bytes (limit %d)", errFrame, n, maxFramePayload)
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	f.payload = buf[:n]
	if _, err := io.ReadFull(fr.r, f.payload); err != nil {
		return frame{}, err
	}
	return f, nil
}
