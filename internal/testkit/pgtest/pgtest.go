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

// BinDir is where the host's PostgreSQL server binaries are: $PGWASM_PG_BIN,
// or Debian 12's PostgreSQL 15 (scripts/setup.sh installs it).
func BinDir() string {
	if d := os.Getenv("PGWASM_PG_BIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// Server is a running PostgreSQL: the postgres superuser logs in without a
// password on the Unix socket in Dir and with Password (SCRAM, TLS offered)
// on Addr.
type Server struct {
	Addr     string // 127.0.0.1:port
	Port     int
	Password string // of user postgres
	Dir      string // the socket, the log, the TLS files; Data below it
	Data     string
	LogFile  string
	bin      string
}

// Start runs a server until the test ends. It skips the test when the
// binaries, the postgres user or root (to run the server as postgres) are
// missing.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin := BinDir()
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		tb.Skipf("no PostgreSQL server binaries in %s (set PGWASM_PG_BIN): %v", bin, err)
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root to run PostgreSQL as the postgres user")
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
	s := &Server{Dir: dir, Data: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "log"), Password: randomHex(tb, 12), bin: bin}

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
	s.Run(tb, "initdb", "-D", s.Data, "-U", "postgres", "--pwfile", pwfile,
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
	f, err := os.OpenFile(filepath.Join(s.Data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatalf("cannot write postgresql.conf: %v", err)
	}
	s.Start(tb)
	tb.Cleanup(func() { s.Stop(tb) })
	return s
}

// Start starts the server again after Stop.
func (s *Server) Start(tb testing.TB) {
	tb.Helper()
	s.Run(tb, "pg_ctl", "-D", s.Data, "-l", s.LogFile, "-w", "-t", "60", "start")
}

// Stop stops the server at once (immediate mode); a server already stopped
// is fine.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	if out, err := s.Command("pg_ctl", "-D", s.Data, "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
		tb.Logf("pg_ctl stop: %v: %s", err, out)
	}
}

// Command is one of the server's programs, run as the postgres user.
func (s *Server) Command(prog string, args ...string) *exec.Cmd {
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(s.bin, prog)}, args...)...)
	cmd.Dir = "/"
	return cmd
}

// Run runs one of the server's programs as the postgres user and fails the
// test if it fails.
func (s *Server) Run(tb testing.TB, prog string, args ...string) {
	tb.Helper()
	if out, err := s.Command(prog, args...).CombinedOutput(); err != nil {
		tb.Fatalf("%s: %v\n%s", prog, err, out)
	}
}

// Log returns the server log, for failure messages.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogFile)
	return string(b)
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
