// Package stack assembles what `pgwasm serve` runs: the relay, the tunnel,
// the HTTP server and their listeners, wired from one Config. The command
// (internal/cli) parses flags into a Config; tests build one directly, so
// in-process tests run the same wiring as the binary.
//
// The wiring that is not any one part's:
//   - the tunnel finds sessions in the relay;
//   - a session the relay re-creates from its token (after a restart, or
//     on another server) gets its tunnel port again, the one its relay URL
//     names if that is free (the tunnel owns the session → port mapping;
//     the URL carries it across the restart);
//   - shutdown drains (docs/serve.md, "Graceful drain").
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/server"
	"github.com/pgwasm/pgwasm/internal/tunnel"
)

// Config is everything a Stack is built from.
type Config struct {
	Relay  relay.Config
	Tunnel tunnel.Config
	// Server is the HTTP server's configuration; New fills in Relay,
	// Gatherer, Tunnel and SNIPort.
	Server server.Config
	// LazySessions: POST /api/sessions only signs the token (see
	// server.RelaySessions).
	LazySessions bool

	// Listen is the HTTP listen address (port 0: any free port).
	Listen string
	// SNIListen is the SNI tunnel's listen address; empty: SNI mode off.
	SNIListen string
	// SNIPublicPort is the SNI port users connect to, if a proxy maps it;
	// 0: the bound port.
	SNIPublicPort uint16

	// ShutdownTimeout bounds Serve's graceful shutdown; DrainDelay is the
	// part of it spent unready but still serving.
	ShutdownTimeout time.Duration
	DrainDelay      time.Duration

	// Log receives every part's log; nil: discarded.
	Log *slog.Logger
}

// DefaultConfig is `pgwasm serve`'s defaults but for the listeners: HTTP
// on a loopback port the kernel picks, SNI mode and port mode off.
func DefaultConfig() Config {
	return Config{
		Relay:           relay.DefaultConfig(),
		Tunnel:          tunnel.DefaultConfig(),
		Listen:          "127.0.0.1:0",
		ShutdownTimeout: 10 * time.Second,
	}
}

// Addrs are the addresses a Stack listens on. `pgwasm serve --ready-file`
// writes them as JSON.
type Addrs struct {
	HTTP string `json:"http"`
	// SNI is empty when SNI mode is off.
	SNI string `json:"sni,omitempty"`
}

// Stack is a built, listening `pgwasm serve`. Serve runs it; Close stops
// it at once.
type Stack struct {
	cfg  Config
	log  *slog.Logger
	mgr  *relay.Manager
	tun  *tunnel.Tunnel
	h    *server.Server
	srv  *http.Server
	http net.Listener
	sni  net.Listener // nil: SNI mode off

	closeOnce sync.Once
	closed    chan struct{}
}

// New builds the parts and binds the listeners; connections wait in the
// listeners' backlog until Serve. On error nothing is left open.
func New(ctx context.Context, cfg Config) (_ *Stack, err error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ShutdownTimeout <= 0 || cfg.DrainDelay < 0 || cfg.DrainDelay >= cfg.ShutdownTimeout {
		return nil, fmt.Errorf("drain delay %s must be at least 0 and less than the shutdown timeout %s", cfg.DrainDelay, cfg.ShutdownTimeout)
	}
	s := &Stack{cfg: cfg, log: log, closed: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	reg, err := newRegistry()
	if err != nil {
		return nil, err
	}
	if len(cfg.Relay.SessionSecret) == 0 {
		log.Warn("no --session-secret: sessions will not survive a restart of this server")
	}
	if s.mgr, err = relay.NewManager(cfg.Relay, log, reg); err != nil {
		return nil, fmt.Errorf("cannot start the relay: %w", err)
	}
	sessions := server.NewRelaySessions(s.mgr)
	sessions.Lazy = cfg.LazySessions
	if s.tun, err = tunnel.New(cfg.Tunnel, sessions.TunnelLookup, log.With("component", "tunnel"), reg); err != nil {
		return nil, fmt.Errorf("cannot start the tunnel: %w", err)
	}
	s.mgr.OnRestore(s.restored)
	if err := s.listen(ctx); err != nil {
		return nil, err
	}

	scfg := cfg.Server
	scfg.Relay, scfg.Gatherer, scfg.Tunnel = s.mgr, reg, s.tun
	if s.sni != nil {
		scfg.SNIPort = uint16(s.sni.Addr().(*net.TCPAddr).Port)
		if cfg.SNIPublicPort != 0 {
			scfg.SNIPort = cfg.SNIPublicPort
		}
	}
	if s.h, err = server.New(scfg, sessions, log.With("component", "http"), reg); err != nil {
		return nil, fmt.Errorf("cannot set up the HTTP server: %w", err)
	}
	s.srv = &http.Server{
		Handler:           s.h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// newRegistry is the metrics registry behind /metrics, with the Go
// runtime's and the process's metrics.
func newRegistry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("cannot register Go metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("cannot register process metrics: %w", err)
	}
	return reg, nil
}

func (s *Stack) listen(ctx context.Context) error {
	var lc net.ListenConfig
	var err error
	if s.http, err = lc.Listen(ctx, "tcp", s.cfg.Listen); err != nil {
		return fmt.Errorf("cannot listen for HTTP: %w", err)
	}
	if s.cfg.SNIListen != "" {
		if s.sni, err = lc.Listen(ctx, "tcp", s.cfg.SNIListen); err != nil {
			return fmt.Errorf("cannot listen for the SNI tunnel: %w", err)
		}
	}
	return nil
}

// restored gives a session the relay re-created its tunnel port again.
func (s *Stack) restored(sess *relay.Session, r *http.Request) {
	if !s.tun.PortsEnabled() {
		return
	}
	if _, err := s.tun.AttachPreferring(context.Background(), sess, server.WantedPort(r.URL.Query())); err != nil {
		s.log.Warn("restored session has no tunnel port", "session", sess.ID(), "err", err)
	}
}

// Addrs returns the bound addresses.
func (s *Stack) Addrs() Addrs {
	a := Addrs{HTTP: s.http.Addr().String()}
	if s.sni != nil {
		a.SNI = s.sni.Addr().String()
	}
	return a
}

// Serve serves until ctx ends, then shuts down gracefully within
// Config.ShutdownTimeout: drain, HTTP shutdown, every session ended. It
// returns early, with nil, if Close is called.
func (s *Stack) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.srv.Serve(s.http); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("HTTP server failed: %w", err)
		}
		return nil
	})
	// The SNI listener outlives ctx by the drain delay: sessions here
	// still take tunnel connections until their pages move.
	sniCtx, stopSNI := context.WithCancel(context.Background())
	defer stopSNI()
	if s.sni != nil {
		g.Go(func() error { return s.tun.ServeSNI(sniCtx, s.sni) })
	}
	g.Go(func() error {
		select {
		case <-gctx.Done():
			return s.shutdown(stopSNI)
		case <-s.closed:
			return nil
		}
	})
	return g.Wait()
}

// shutdown drains, then stops everything by the shutdown deadline.
func (s *Stack) shutdown(stopSNI func()) error {
	deadline := time.Now().Add(s.cfg.ShutdownTimeout)
	s.drain(deadline, stopSNI)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	// Hijacked websockets are not Shutdown's: ending the sessions
	// closes what is left of them, and every tunnel connection.
	s.mgr.Close()
	s.tun.Close()
	s.log.Info("shut down")
	if err != nil {
		return fmt.Errorf("HTTP shutdown: %w", err)
	}
	return nil
}

// drain is the graceful part of a shutdown (docs/serve.md, "Graceful
// drain"): unready at once and no new sessions or websockets; after the
// drain delay, when a load balancer has taken this server out, every
// websocket is closed with code 4503 so its VM reconnects at once (to
// another server, which re-creates the session from its token), and the
// SNI listener closes. It spends at most half of what is left until the
// deadline on close handshakes.
func (s *Stack) drain(deadline time.Time, stopSNI func()) {
	start := time.Now()
	s.log.Info("draining", "drain_delay", s.cfg.DrainDelay, "shutdown_timeout", s.cfg.ShutdownTimeout)
	s.h.SetDraining()
	s.mgr.Drain()
	time.Sleep(s.cfg.DrainDelay)
	stopSNI()
	ctx, cancel := context.WithTimeout(context.Background(), time.Until(deadline)/2)
	defer cancel()
	n := s.mgr.CloseWebsockets(ctx)
	s.log.Info("drained", "websockets", n, "seconds", time.Since(start).Seconds())
}

// Close stops everything at once, without a drain: listeners, HTTP
// connections, sessions (their websockets close), tunnel connections. A
// running Serve returns.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		if s.srv != nil {
			s.srv.Close()
		}
		for _, ln := range []net.Listener{s.http, s.sni} {
			if ln != nil {
				ln.Close()
			}
		}
		if s.mgr != nil {
			s.mgr.Close()
		}
		if s.tun != nil {
			s.tun.Close()
		}
	})
	return nil
}
