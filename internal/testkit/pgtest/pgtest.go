// Package pgtest starts a real PostgreSQL server for tests (internal/hostpg:
// the host's Debian build, run as the postgres user in a temporary
// directory, on a free loopback port), with TLS on and password
// authentication, stopped and removed when the test ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/hostpg"
)

// BinDir is where the host's PostgreSQL server binaries are.
func BinDir() string { return hostpg.BinDir() }

// Server is a running host PostgreSQL (see hostpg.Server) whose methods fail
// the test instead of returning errors.
type Server struct {
	*hostpg.Server
}

// Start runs a server with TLS and a random password for TCP until the test
// ends. It skips the test when the binaries, the postgres user or root (to
// run the server as postgres) are missing.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if err := hostpg.Check(""); err != nil {
		tb.Skip(err)
	}
	pw := make([]byte, 12)
	if _, err := rand.Read(pw); err != nil {
		tb.Fatal(err)
	}
	hs, err := hostpg.Start(context.Background(), hostpg.Options{Password: hex.EncodeToString(pw), TLS: true, Prefix: "pgwasm-pgtest-"})
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{hs}
	tb.Cleanup(func() {
		s.Stop(tb)
		if err := s.Remove(); err != nil {
			tb.Log(err)
		}
	})
	return s
}

// Start starts the server again after Stop.
func (s *Server) Start(tb testing.TB) {
	tb.Helper()
	if err := s.Server.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
}

// Stop stops the server at once (immediate mode); a server already stopped
// is fine.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	if err := s.Server.Stop(context.Background()); err != nil {
		tb.Logf("pg_ctl stop: %v", err)
	}
}

// Command is one of the server's programs, run as the postgres user.
func (s *Server) Command(prog string, args ...string) *exec.Cmd {
	return s.Server.Command(context.Background(), prog, args...)
}

// Run runs one of the server's programs as the postgres user and fails the
// test if it fails.
func (s *Server) Run(tb testing.TB, prog string, args ...string) {
	tb.Helper()
	if err := s.Server.Run(context.Background(), prog, args...); err != nil {
		tb.Fatal(err)
	}
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
