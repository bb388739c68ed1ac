package tunnel

import (
	"bufio"
	"bytes"
	"maps"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func encode(t testing.TB, m pgproto3.FrontendMessage) []byte {
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadFirstMessage(t *testing.T) {
	startup := encode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	tests := []struct {
		name     string
		in       []byte
		want     firstKind
		consumed int
		wantErr  bool
	}{
		{"ssl request", encode(t, &pgproto3.SSLRequest{}), kindSSLRequest, 8, false},
		{"gssenc request", encode(t, &pgproto3.GSSEncRequest{}), kindGSSENCRequest, 8, false},
		{"cancel", encode(t, &pgproto3.CancelRequest{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}), kindCancelRequest, 16, false},
		{"startup", startup, kindStartup, len(startup), false},
		{"direct tls", []byte{0x16, 3, 1, 0, 200}, kindDirectTLS, 0, false},
		{"ssl request then more", append(encode(t, &pgproto3.SSLRequest{}), 0x16, 3, 1), kindSSLRequest, 8, false},
		{"short length", []byte{0, 0, 0, 4, 0, 0, 0, 0}, 0, 0, true},
		{"huge length", []byte{0, 1, 0, 0, 0, 3, 0, 0}, 0, 0, true},
		{"unknown code", []byte{0, 0, 0, 8, 0, 9, 0, 0}, 0, 0, true},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), 0, 0, true},
		{"truncated", startup[:10], 0, 0, true},
		{"empty", nil, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReader(bytes.NewReader(tt.in))
			kind, _, err := readFirstMessage(br)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("readFirstMessage() = %v, want an error", kind)
				}
				return
			}
			if err != nil || kind != tt.want {
				t.Fatalf("readFirstMessage() = %v, %v, want %v", kind, err, tt.want)
			}
			if got := len(tt.in) - br.Buffered(); got != tt.consumed {
				t.Errorf("consumed %d bytes, want %d", got, tt.consumed)
			}
		})
	}
}

// FuzzStartup checks that readFirstMessage never panics, consumes exactly
// one message, and that a StartupMessage it accepts decodes to parameters
// that encode back to the same bytes.
func FuzzStartup(f *testing.F) {
	f.Add(encode(f, &pgproto3.SSLRequest{}))
	f.Add(encode(f, &pgproto3.GSSEncRequest{}))
	f.Add(encode(f, &pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{9, 9, 9, 9}}))
	f.Add(encode(f, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u", "application_name": "psql"}}))
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		kind, body, err := readFirstMessage(br)
		if err != nil {
			return
		}
		consumed := len(in) - br.Buffered()
		if kind == kindDirectTLS {
			if consumed != 0 || in[0] != 0x16 {
				t.Fatalf("direct TLS consumed %d bytes", consumed)
			}
			return
		}
		if consumed != len(body)+4 {
			t.Fatalf("consumed %d bytes for a %d-byte body", consumed, len(body))
		}
		if kind != kindStartup || (body[1] != 0 || body[2] != 0 || (body[3] != 0 && body[3] != 2)) {
			return
		}
		var sm pgproto3.StartupMessage
		if err := sm.Decode(body); err != nil {
			t.Fatalf("accepted a startup message that does not decode: %v", err)
		}
		var sm2 pgproto3.StartupMessage
		if err := sm2.Decode(encode(t, &sm)[4:]); err != nil || !maps.Equal(sm.Parameters, sm2.Parameters) {
			t.Fatalf("startup parameters do not survive encode/decode: %v", err)
		}
	})
}
