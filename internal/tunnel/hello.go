package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// We parse the ClientHello ourselves instead of running crypto/tls's
// GetConfigForClient over a replaying conn: we need the exact bytes to
// forward to the VM anyway, the parser is small enough to fuzz, and it never
// starts a TLS state machine for connections we only route.

const (
	recordHeaderLen      = 5
	recordTypeHandshake  = 0x16
	handshakeClientHello = 1
	maxRecordPayload     = 1<<14 + 2048 // TLSCiphertext limit from RFC 8446 5.2

	extServerName = 0
	extALPN       = 16
)

// errNotTLS means the first byte was not a TLS handshake record.
var errNotTLS = errors.New("not a TLS handshake record")

// clientHello is what routing needs from a TLS ClientHello.
type clientHello struct {
	ServerName string
	ALPN       []string
}

// readClientHello reads TLS records from r until one whole ClientHello
// handshake message is in, and returns the raw record bytes (to be forwarded
// untouched) and the parsed message. It reads at most maxLen bytes.
func readClientHello(r io.Reader, maxLen int) ([]byte, *clientHello, error) {
	var raw, msg []byte
	need := -1 // handshake message length, once known
	for need < 0 || len(msg) < need {
		var hdr [recordHeaderLen]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return raw, nil, fmt.Errorf("cannot read TLS record header: %w", err)
		}
		if hdr[0] != recordTypeHandshake {
			return raw, nil, errNotTLS
		}
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		if n == 0 || n > maxRecordPayload {
			return raw, nil, fmt.Errorf("bad TLS record length %d", n)
		}
		if len(raw)+recordHeaderLen+n > maxLen {
			return raw, nil, fmt.Errorf("ClientHello larger than %d bytes", maxLen)
		}
		raw = append(raw, hdr[:]...)
		start := len(raw)
		raw = append(raw, make([]byte, n)...)
		if k, err := io.ReadFull(r, raw[start:]); err != nil {
			return raw[:start+k], nil, fmt.Errorf("cannot read TLS record: %w", err)
		}
		msg = append(msg, raw[start:]...)
		if need < 0 && len(msg) >= 4 {
			if msg[0] != handshakeClientHello {
				return raw, nil, fmt.Errorf("first handshake message has type %d, want ClientHello", msg[0])
			}
			need = 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
			if need > maxLen {
				return raw, nil, fmt.Errorf("ClientHello larger than %d bytes", maxLen)
			}
		}
	}
	ch, err := parseClientHello(msg[:need])
	if err != nil {
		return raw, nil, err
	}
	return raw, ch, nil
}

// parseClientHello parses a handshake message (type, 3-byte length, body).
func parseClientHello(msg []byte) (*clientHello, error) {
	s := cursor(msg)
	typ, ok := s.u8()
	if !ok || typ != handshakeClientHello {
		return nil, errors.New("not a ClientHello")
	}
	body, ok := s.bytes24()
	if !ok || len(s) != 0 {
		return nil, errors.New("bad ClientHello length")
	}
	b := cursor(body)
	if !b.skip(2+32) || !b.skip8() || !b.skip16() || !b.skip8() { // version, random, session id, cipher suites, compression
		return nil, errors.New("truncated ClientHello")
	}
	ch := &clientHello{}
	if len(b) == 0 {
		return ch, nil // no extensions at all
	}
	exts, ok := b.bytes16()
	if !ok || len(b) != 0 {
		return nil, errors.New("bad ClientHello extensions")
	}
	seen := map[uint16]bool{}
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		data, ok2 := exts.bytes16()
		if !ok1 || !ok2 {
			return nil, errors.New("truncated ClientHello extension")
		}
		if seen[typ] {
			return nil, fmt.Errorf("duplicate ClientHello extension %d", typ)
		}
		seen[typ] = true
		var err error
		switch typ {
		case extServerName:
			ch.ServerName, err = parseServerName(data)
		case extALPN:
			ch.ALPN, err = parseALPN(data)
		}
		if err != nil {
			return nil, err
		}
	}
	return ch, nil
}

func parseServerName(data cursor) (string, error) {
	list, ok := data.bytes16()
	if !ok || len(data) != 0 {
		return "", errors.New("bad server_name extension")
	}
	for len(list) > 0 {
		typ, ok1 := list.u8()
		name, ok2 := list.bytes16()
		if !ok1 || !ok2 {
			return "", errors.New("truncated server_name extension")
		}
		if typ == 0 { // host_name
			if len(name) == 0 {
				return "", errors.New("empty server name")
			}
			return string(name), nil
		}
	}
	return "", nil
}

func parseALPN(data cursor) ([]string, error) {
	list, ok := data.bytes16()
	if !ok || len(data) != 0 {
		return nil, errors.New("bad ALPN extension")
	}
	var protos []string
	for len(list) > 0 {
		p, ok := list.bytes8()
		if !ok || len(p) == 0 {
			return nil, errors.New("bad ALPN protocol name")
		}
		protos = append(protos, string(p))
	}
	return protos, nil
}

// cursor is a tiny big-endian reader in the style of x/crypto/cryptobyte.
type cursor []byte

func (c *cursor) u8() (byte, bool) {
	if len(*c) < 1 {
		return 0, false
	}
	v := (*c)[0]
	*c = (*c)[1:]
	return v, true
}

func (c *cursor) u16() (uint16, bool) {
	if len(*c) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*c)
	*c = (*c)[2:]
	return v, true
}

func (c *cursor) take(n int) (cursor, bool) {
	if n < 0 || len(*c) < n {
		return nil, false
	}
	v := (*c)[:n]
	*c = (*c)[n:]
	return v, true
}

func (c *cursor) skip(n int) bool { _, ok := c.take(n); return ok }

func (c *cursor) bytes8() (cursor, bool) {
	n, ok := c.u8()
	if !ok {
		return nil, false
	}
	return c.take(int(n))
}

func (c *cursor) bytes16() (cursor, bool) {
	n, ok := c.u16()
	if !ok {
		return nil, false
	}
	return c.take(int(n))
}

func (c *cursor) bytes24() (cursor, bool) {
	if len(*c) < 3 {
		return nil, false
	}
	n := int((*c)[0])<<16 | int((*c)[1])<<8 | int((*c)[2])
	*c = (*c)[3:]
	return c.take(n)
}

func (c *cursor) skip8() bool  { _, ok := c.bytes8(); return ok }
func (c *cursor) skip16() bool { _, ok := c.bytes16(); return ok }
