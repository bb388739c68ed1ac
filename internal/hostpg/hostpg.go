// Package hostpg runs the host's own PostgreSQL (Debian's server binaries)
// in a temporary directory as the postgres user, on a loopback port below
// the ephemeral range: the real server the tests (through
// internal/testkit/pgtest) and the bench's native comparison start.
package hostpg

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
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

// Options say how the server differs from initdb's defaults.
type Options struct {
	BinDir string // empty: BinDir()
	// Password, when set, is the postgres user's and TCP connections need
	// it (SCRAM); when empty, TCP is trusted like the Unix socket.
	Password string
	TLS      bool // a self-signed certificate for localhost, ssl = on
	// Conf is postgresql.conf lines appended after ours. Where the server
	// listens (listen_addresses, port, unix_socket_directories) comes after
	// them: Addr and Dir must stay true.
	Conf       string
	InitdbArgs []string          // after ours, so they win
	DataFiles  map[string][]byte // written into the data directory after initdb (pg_hba.conf, an include), owned by postgres, mode 0600
	Prefix     string            // of the temporary directory's name
}

// Server is a running PostgreSQL: the postgres superuser logs in without a
// password on the Unix socket in Dir, and on Addr as Options said.
type Server struct {
	Addr     string // 127.0.0.1:port
	Port     int
	Password string
	Dir      string // the socket, the log, the TLS files; Data below it
	Data     string
	LogFile  string
	bin      string
	uid, gid int
}

// Check says why a server cannot start here: the binaries, the postgres
// user or root (to run the server as postgres) are missing.
func Check(binDir string) error {
	if binDir == "" {
		binDir = BinDir()
	}
	if _, err := os.Stat(filepath.Join(binDir, "initdb")); err != nil {
		return fmt.Errorf("no PostgreSQL server binaries in %s (make setup installs them; PGWASM_PG_BIN points elsewhere): %w", binDir, err)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("running PostgreSQL as the postgres user needs root")
	}
	if _, err := user.Lookup("postgres"); err != nil {
		return fmt.Errorf("no postgres user: %w", err)
	}
	return nil
}

// Start creates a cluster and starts it. The caller stops it with Stop and
// removes its directory with Remove.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.BinDir == "" {
		opts.BinDir = BinDir()
	}
	if err := Check(opts.BinDir); err != nil {
		return nil, err
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("no postgres user: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("postgres user's uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("postgres user's gid %q: %w", u.Gid, err)
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = "pgwasm-hostpg-"
	}
	// Not t.TempDir: its parents are private to root, and postgres must
	// reach its directory.
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("cannot create the PostgreSQL directory: %w", err)
	}
	s := &Server{Dir: dir, Data: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "log"),
		Password: opts.Password, bin: opts.BinDir, uid: uid, gid: gid}
	if err := s.create(ctx, opts); err != nil {
		s.Remove()
		return nil, err
	}
	if err := s.Start(ctx); err != nil {
		s.Remove()
		return nil, err
	}
	return s, nil
}

func (s *Server) create(ctx context.Context, opts Options) error {
	if err := os.Chown(s.Dir, s.uid, s.gid); err != nil {
		return fmt.Errorf("cannot hand %s to postgres: %w", s.Dir, err)
	}
	initdb := []string{"-D", s.Data, "-U", "postgres", "--auth-local=trust", "--no-sync", "-E", "UTF8", "--locale=C"}
	if s.Password != "" {
		pwfile := filepath.Join(s.Dir, "pw")
		if err := s.writeFile("pw", []byte(s.Password+"\n"), 0o600); err != nil {
			return err
		}
		initdb = append(initdb, "--pwfile", pwfile, "--auth-host=scram-sha-256")
	} else {
		initdb = append(initdb, "--auth-host=trust")
	}
	if err := s.Run(ctx, "initdb", append(initdb, opts.InitdbArgs...)...); err != nil {
		return err
	}
	for name, b := range opts.DataFiles {
		if err := s.writeFile(filepath.Join("data", name), b, 0o600); err != nil {
			return err
		}
	}
	port, err := testkit.FindRange("127.0.0.1", 1)
	if err != nil {
		return fmt.Errorf("no free port for PostgreSQL: %w", err)
	}
	s.Port = port
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf := []string{
		"fsync = off",
		"max_connections = 50",
	}
	if opts.TLS {
		cert, key, err := selfSigned()
		if err != nil {
			return err
		}
		if err := s.writeFile("server.crt", cert, 0o644); err != nil {
			return err
		}
		if err := s.writeFile("server.key", key, 0o600); err != nil {
			return err
		}
		conf = append(conf, "ssl = on",
			fmt.Sprintf("ssl_cert_file = '%s/server.crt'", s.Dir),
			fmt.Sprintf("ssl_key_file = '%s/server.key'", s.Dir))
	}
	where := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", port),
		fmt.Sprintf("unix_socket_directories = '%s'", s.Dir),
	}
	text := strings.Join(conf, "\n") + "\n" + opts.Conf + "\n" + strings.Join(where, "\n") + "\n"
	f, err := os.OpenFile(filepath.Join(s.Data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cannot open postgresql.conf: %w", err)
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot write postgresql.conf: %w", err)
	}
	return nil
}

// writeFile writes one of the server's files in Dir, owned by postgres.
func (s *Server) writeFile(name string, b []byte, mode os.FileMode) error {
	path := filepath.Join(s.Dir, name)
	if err := os.WriteFile(path, b, mode); err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	if err := os.Chown(path, s.uid, s.gid); err != nil {
		return fmt.Errorf("cannot hand %s to postgres: %w", path, err)
	}
	return nil
}

// Start starts the server (again, after Stop).
func (s *Server) Start(ctx context.Context) error {
	return s.Run(ctx, "pg_ctl", "-D", s.Data, "-l", s.LogFile, "-w", "-t", "60", "start")
}

// Stop stops the server at once (immediate mode).
func (s *Server) Stop(ctx context.Context) error {
	return s.Run(ctx, "pg_ctl", "-D", s.Data, "-m", "immediate", "-w", "stop")
}

// Remove deletes the server's directory; stop it first.
func (s *Server) Remove() error {
	if err := os.RemoveAll(s.Dir); err != nil {
		return fmt.Errorf("cannot remove %s: %w", s.Dir, err)
	}
	return nil
}

// Command is one of the server's programs, run as the postgres user.
func (s *Server) Command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", filepath.Join(s.bin, prog)}, args...)...)
	cmd.Dir = "/"
	return cmd
}

// Run runs one of the server's programs as the postgres user; its error
// carries the program's output.
func (s *Server) Run(ctx context.Context, prog string, args ...string) error {
	if out, err := s.Command(ctx, prog, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", prog, err, out)
	}
	return nil
}

// Log returns the server log, for failure messages.
func (s *Server) Log() string {
	b, err := os.ReadFile(s.LogFile)
	if err != nil {
		return fmt.Sprintf("(cannot read the log: %v)", err)
	}
	return string(b)
}

func selfSigned() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot make a TLS key: %w", err)
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
		return nil, nil, fmt.Errorf("cannot make a TLS certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot encode the TLS key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}
