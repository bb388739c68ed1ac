package tunnel

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// goHello captures the first flight of Go's TLS client.
func goHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		tls.Client(a, cfg).Handshake()
	}()
	b.SetDeadline(time.Now().Add(5 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(b, hdr[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr[:], body...)
}

// splitRecord re-frames one handshake record as two, as a client may.
func splitRecord(rec []byte, at int) []byte {
	body := rec[5:]
	out := []byte{}
	for _, part := range [][]byte{body[:at], body[at:]} {
		out = append(out, 0x16, rec[1], rec[2], byte(len(part)>>8), byte(len(part)))
		out = append(out, part...)
	}
	return out
}

func TestReadClientHello(t *testing.T) {
	goSNI := goHello(t, &tls.Config{ServerName: "abc.pg.localhost", NextProtos: []string{"postgresql"}})
	goIP := goHello(t, &tls.Config{InsecureSkipVerify: true})
	goALPN := goHello(t, &tls.Config{ServerName: "x.example", NextProtos: []string{"h2", "postgresql"}, MaxVersion: tls.VersionTLS12})
	psql, err := os.ReadFile("testdata/hello-psql15.bin")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      []byte
		max     int
		sni     string
		alpn    []string
		wantErr bool
	}{
		{"go sni alpn", goSNI, 16 << 10, "abc.pg.localhost", []string{"postgresql"}, false},
		{"go no sni", goIP, 16 << 10, "", nil, false},
		{"go tls12 two alpn", goALPN, 16 << 10, "x.example", []string{"h2", "postgresql"}, false},
		{"psql 15", psql, 16 << 10, "abc123.pg.localhost", nil, false},
		{"split in two records", splitRecord(goSNI, 100), 16 << 10, "abc.pg.localhost", []string{"postgresql"}, false},
		{"split inside header", splitRecord(goSNI, 2), 16 << 10, "abc.pg.localhost", []string{"postgresql"}, false},
		{"over the cap", goSNI, 600, "", nil, true},
		{"truncated", goSNI[:len(goSNI)-10], 16 << 10, "", nil, true},
		{"not handshake", append([]byte{0x17}, goSNI[1:]...), 16 << 10, "", nil, true},
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 16 << 10, "", nil, true},
		{"zero length record", []byte{0x16, 3, 1, 0, 0}, 16 << 10, "", nil, true},
		{"server hello type", append(append([]byte{}, goSNI[:5]...), append([]byte{2}, goSNI[6:]...)...), 16 << 10, "", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, ch, err := readClientHello(bytes.NewReader(tt.in), tt.max)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("readClientHello() = %+v, want an error", ch)
				}
				return
			}
			if err != nil {
				t.Fatalf("readClientHello() error: %v", err)
			}
			if !bytes.Equal(raw, tt.in) {
				t.Errorf("raw bytes differ from input (%d vs %d bytes)", len(raw), len(tt.in))
			}
			if ch.ServerName != tt.sni || !slices.Equal(ch.ALPN, tt.alpn) {
				t.Errorf("readClientHello() = %q %q, want %q %q", ch.ServerName, ch.ALPN, tt.sni, tt.alpn)
			}
		})
	}
}

// FuzzClientHello checks that the parser never panics, never reads past the
// cap, and gives the same answer when fed its own raw output.
func FuzzClientHello(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/hello-*.bin")
	for _, name := range seeds {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(splitRecord(b, 7))
	}
	f.Add(goHello(f, &tls.Config{ServerName: "q.pg.localhost", MaxVersion: tls.VersionTLS12}))
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 4096
		raw, ch, err := readClientHello(bytes.NewReader(in), max)
		if len(raw) > max {
			t.Fatalf("read %d bytes, cap %d", len(raw), max)
		}
		if !bytes.HasPrefix(in, raw) {
			t.Fatal("raw is not a prefix of the input")
		}
		if err != nil {
			return
		}
		raw2, ch2, err := readClientHello(bytes.NewReader(raw), max)
		if err != nil || !bytes.Equal(raw, raw2) || ch.ServerName != ch2.ServerName || !slices.Equal(ch.ALPN, ch2.ALPN) {
			t.Fatalf("second parse differs: %v %+v %+v", err, ch, ch2)
		}
	})
}
