package tunnel

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// firstKind says how a PostgreSQL client opened the connection.
type firstKind int

const (
	kindDirectTLS firstKind = iota + 1 // PostgreSQL 17 sslnegotiation=direct: ClientHello at byte 0
	kindSSLRequest
	kindGSSENCRequest
	kindCancelRequest
	kindStartup
)

func (k firstKind) String() string {
	switch k {
	case kindDirectTLS:
		return "direct-tls"
	case kindSSLRequest:
		return "ssl-request"
	case kindGSSENCRequest:
		return "gssenc-request"
	case kindCancelRequest:
		return "cancel-request"
	case kindStartup:
		return "startup"
	}
	return "unknown"
}

// Codes from PostgreSQL's pqcomm.h.
const (
	sslRequestCode    = 80877103
	gssencRequestCode = 80877104
	cancelRequestCode = 80877102
	protoMajor3       = 3
	// maxStartupLen is PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
	maxStartupLen = 10000
)

var errGarbage = errors.New("not a PostgreSQL connection start")

// readFirstMessage reads the message a PostgreSQL client opens a connection
// with. A direct TLS start is only peeked, so the ClientHello stays in br.
func readFirstMessage(br *bufio.Reader) (firstKind, []byte, error) {
	b, err := br.Peek(1)
	if err != nil {
		return 0, nil, fmt.Errorf("cannot read first byte: %w", err)
	}
	if b[0] == recordTypeHandshake {
		return kindDirectTLS, nil, nil
	}
	var hdr [8]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("cannot read startup packet header: %w", err)
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	code := binary.BigEndian.Uint32(hdr[4:])
	if n < 8 || n > maxStartupLen {
		return 0, nil, fmt.Errorf("%w: startup packet length %d", errGarbage, n)
	}
	body := make([]byte, n-4)
	copy(body, hdr[4:])
	if _, err := io.ReadFull(br, body[4:]); err != nil {
		return 0, nil, fmt.Errorf("cannot read startup packet: %w", err)
	}
	switch {
	case code == sslRequestCode && n == 8:
		return kindSSLRequest, body, nil
	case code == gssencRequestCode && n == 8:
		return kindGSSENCRequest, body, nil
	case code == cancelRequestCode && n >= 16:
		return kindCancelRequest, body, nil
	case code>>16 == protoMajor3:
		var sm pgproto3.StartupMessage
		if code == pgproto3.ProtocolVersion30 || code == pgproto3.ProtocolVersion32 {
			if err := sm.Decode(body); err != nil {
				return 0, nil, fmt.Errorf("%w: %w", errGarbage, err)
			}
		}
		return kindStartup, body, nil
	}
	return 0, nil, fmt.Errorf("%w: code %d", errGarbage, code)
}

// sslRequest is the 8-byte message asking a server for TLS.
func sslRequest() []byte {
	var b [8]byte
	binary.BigEndian.PutUint32(b[:4], 8)
	binary.BigEndian.PutUint32(b[4:], sslRequestCode)
	return b[:]
}

// fatal encodes a FATAL ErrorResponse, the way PostgreSQL rejects a
// connection before authentication.
func fatal(code, msg, hint string) []byte {
	b, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg, Hint: hint}).Encode(nil)
	if err != nil {
		// Encode only fails on oversized messages; ours are short constants.
		panic(fmt.Sprintf("cannot encode ErrorResponse: %v", err))
	}
	return b
}

// refusePlain talks a plaintext client through to an ErrorResponse: it
// declines TLS and GSS encryption, waits for the StartupMessage and answers
// it. libpq with sslmode=prefer/disable then shows the message to the user.
func refusePlain(br *bufio.Reader, w io.Writer, kind firstKind, errMsg []byte) error {
	for range 3 {
		switch kind {
		case kindSSLRequest, kindGSSENCRequest:
			if _, err := w.Write([]byte{'N'}); err != nil {
				return fmt.Errorf("cannot decline encryption: %w", err)
			}
		case kindStartup:
			if _, err := w.Write(errMsg); err != nil {
				return fmt.Errorf("cannot send ErrorResponse: %w", err)
			}
			return nil
		default:
			return nil
		}
		var err error
		if kind, _, err = readFirstMessage(br); err != nil {
			return err
		}
		if kind == kindDirectTLS {
			return nil
		}
	}
	return nil
}
