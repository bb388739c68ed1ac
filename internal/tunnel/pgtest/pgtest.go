// Package pgtest starts a real PostgreSQL server for tests: the host's
// Debian build, run as the postgres user in a temporary directory, on a free
// loopback port, with TLS on and password authentication.
package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/testkit"
)

// BinDir holds the host's PostgreSQL server binaries.
const BinDir = "/usr/lib/postgresql/15/bin"

// Server is a running PostgreSQL.
type Server struct {
	Addr     string // 127.0.0.1:port
	Port     int
	Password string // of user postgres
	Dir      string
}

// Start runs a server until the test ends. It skips the test when the
// binaries or the postgres user are missing.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if _, err := os.Stat(filepath.Join(BinDir, "initdb")); err != nil {
		tb.Skipf("no PostgreSQL server binaries: %v", err)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		tb.Skipf("no postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	// t.TempDir's parents are private to root; postgres must reach its dir.
	dir, err := os.MkdirTemp("", "pgwasm-pgtest-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{Dir: dir, Password: randomHex(tb, 12)}

	pwfile := filepath.Join(dir, "pw")
	writeFile(tb, pwfile, []byte(s.Password+"\n"), 0o600)
	certPEM, keyPEM := selfSigned(tb)
	writeFile(tb, filepath.Join(dir, "server.crt"), certPEM, 0o644)
	writeFile(tb, filepath.Join(dir, "server.key"), keyPEM, 0o600)
	for _, name := range []string{"", "pw", "server.crt", "server.key"} {
		if err := os.Chown(filepath.Join(dir, name), uid, gid); err != nil {
			tb.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	run(tb, "initdb", "-D", data, "-U", "postgres", "--pwfile", pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C")

	s.Port = testkit.FreePort(tb, "127.0.0.1")
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	conf := fmt.Sprintf(`listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
ssl = on
ssl_cert_file = '%s/server.crt'
ssl_key_file = '%s/server.key'
fsync = off
max_connections = 50
`, s.Port, dir, dir, dir)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		tb.Fatal(err)
	}
	f.Close()
	run(tb, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start")
	tb.Cleanup(func() {
		cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(BinDir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Logf("pg_ctl stop: %v: %s", err, out)
		}
	})
	return s
}

// Log returns the server log, for failure messages.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "log"))
	return string(b)
}

func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(BinDir, name)}, args...)...)
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("%s: %v\n%s", name, err, out)
	}
}

func writeFile(tb testing.TB, name string, b []byte, mode os.FileMode) {
	tb.Helper()
	if err := os.WriteFile(name, b, mode); err != nil {
		tb.Fatal(err)
	}
}

func randomHex(tb testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func selfSigned(tb testing.TB) (certPEM, keyPEM []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "pgwasm-test"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// Forward copies c to and from the TCP server at addr until both sides are
// done: a simulated VM's connection handed to a host PostgreSQL.
func Forward(c net.Conn, addr string) {
	defer c.Close()
	pg, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return
	}
	defer pg.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(pg, c)
		pg.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, pg)
	<-done
}
