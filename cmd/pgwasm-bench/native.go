package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgwasm/pgwasm/internal/hostpg"
)

// nativePG is the host's own PostgreSQL for the native comparison: trusted
// on its Unix socket and on loopback TCP (pgbench and psql use that).
type nativePG struct {
	*hostpg.Server
	logger *slog.Logger
}

// startNativePG starts it with the VM's settings where they matter for a
// single-session CPU-bound query (no JIT, no parallel workers) and without
// waits for the disk, as in the VM.
func startNativePG(ctx context.Context, binDir string, logger *slog.Logger) (*nativePG, error) {
	s, err := hostpg.Start(ctx, hostpg.Options{
		BinDir: binDir,
		Prefix: "pgwasm-bench-pg-",
		Conf:   "synchronous_commit = off\njit = off\nmax_parallel_workers_per_gather = 0\n",
	})
	if err != nil {
		return nil, fmt.Errorf("native PostgreSQL: %w", err)
	}
	return &nativePG{Server: s, logger: logger}, nil
}

// connect opens a session over the Unix socket.
func (p *nativePG) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", p.Dir, p.Port))
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the native PostgreSQL: %w", err)
	}
	return conn, nil
}

// stop stops the server and removes its directory.
func (p *nativePG) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		p.logger.Warn("native PostgreSQL did not stop cleanly", "err", err)
	}
	if err := p.Remove(); err != nil {
		p.logger.Warn("cannot remove the native PostgreSQL directory", "err", err)
	}
}
