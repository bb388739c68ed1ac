package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgwasm/pgwasm/internal/testkit"
)

// nativePG is the host's own PostgreSQL, started in a temporary directory as
// the postgres user, reachable only through a Unix socket in that directory.
type nativePG struct {
	binDir string
	dir    string
	data   string
	port   int // loopback TCP port (pgbench and psql use it)
	logger *slog.Logger
}

// startNativePG runs initdb and pg_ctl start from binDir.
func startNativePG(ctx context.Context, binDir string, logger *slog.Logger) (*nativePG, error) {
	if _, err := os.Stat(filepath.Join(binDir, "initdb")); err != nil {
		return nil, fmt.Errorf("no host PostgreSQL server binaries in %s (make setup installs them): %w", binDir, err)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("no postgres user on the host: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "pgwasm-bench-pg-")
	if err != nil {
		return nil, fmt.Errorf("cannot create the native PostgreSQL directory: %w", err)
	}
	port, err := testkit.FindRange("127.0.0.1", 1)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("no free port for the native PostgreSQL: %w", err)
	}
	p := &nativePG{binDir: binDir, dir: dir, data: filepath.Join(dir, "data"), port: port, logger: logger}
	if err := os.Chown(dir, uid, gid); err != nil {
		p.remove()
		return nil, fmt.Errorf("cannot hand %s to postgres: %w", dir, err)
	}
	if err := p.run(ctx, "initdb", "-D", p.data, "-U", "postgres", "--auth-local=trust",
		"--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		p.remove()
		return nil, err
	}
	// Loopback only (trust auth, for pgbench and psql); settings as in the
	// VM where they matter for a single-session CPU-bound query (no JIT, no
	// parallel workers).
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = off\njit = off\nmax_parallel_workers_per_gather = 0\n", port, dir)
	f, err := os.OpenFile(filepath.Join(p.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(conf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		p.remove()
		return nil, fmt.Errorf("cannot configure the native PostgreSQL: %w", err)
	}
	if err := p.run(ctx, "pg_ctl", "-D", p.data, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start"); err != nil {
		p.remove()
		return nil, err
	}
	return p, nil
}

func (p *nativePG) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", filepath.Join(p.binDir, name)}, args...)...)
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("native PostgreSQL %s: %w\n%s", name, err, tail(string(out), 1000))
	}
	return nil
}

// connect opens a session over the Unix socket.
func (p *nativePG) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", p.dir, p.port))
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the native PostgreSQL: %w", err)
	}
	return conn, nil
}

// stop stops the server and removes its directory.
func (p *nativePG) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.run(ctx, "pg_ctl", "-D", p.data, "-m", "immediate", "-w", "stop"); err != nil {
		p.logger.Warn("native PostgreSQL did not stop cleanly", "err", err)
	}
	p.remove()
}

func (p *nativePG) remove() {
	if err := os.RemoveAll(p.dir); err != nil {
		p.logger.Warn("cannot remove the native PostgreSQL directory", "dir", p.dir, "err", err)
	}
}
