// Package tunnel carries inbound PostgreSQL connections from the internet to
// the PostgreSQL server inside a browser VM, through the session's relay.
//
// Two modes, both byte-transparent (TLS ends in the VM, the relay never sees
// plaintext):
//   - port mode: every session gets its own TCP port from a range;
//   - SNI mode: one port for all sessions, routed by the TLS server name
//     "<session-id>.<domain>", with classic SSLRequest or direct TLS starts.
package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Session is the part of a relay session the tunnel needs.
type Session interface {
	ID() string
	// DialGuest opens a TCP connection to port inside the VM.
	DialGuest(ctx context.Context, port uint16) (net.Conn, error)
	// Done is closed when the session ends.
	Done() <-chan struct{}
}

// LookupFunc finds a live session by id.
type LookupFunc func(id string) (Session, bool)

// Errors from Attach.
var (
	ErrPortsDisabled = errors.New("port mode is disabled")
	ErrNoFreePort    = errors.New("no free tunnel port")
	ErrClosed        = errors.New("tunnel closed")
)

// Config holds the tunnel settings.
type Config struct {
	// PortBind is the address port-mode listeners bind to.
	PortBind netip.Addr
	// PortFirst..PortLast is the port range; PortFirst == 0 disables port mode.
	PortFirst, PortLast uint16
	// Domain is the SNI suffix: sessions are reached as <id>.<Domain>.
	Domain string
	// GuestPort is PostgreSQL's port inside the VM.
	GuestPort uint16
	// HandshakeTimeout bounds the time from accept to routed (SNI mode),
	// so slow or idle clients cannot hold sockets.
	HandshakeTimeout time.Duration
	// DialTimeout bounds the connection into the VM.
	DialTimeout time.Duration
	// MaxHelloSize caps the ClientHello (records included) the tunnel buffers.
	MaxHelloSize int
	// MaxHandshakes caps SNI connections still in their handshake, so a
	// flood of idle connections cannot pile up goroutines and buffers.
	MaxHandshakes int
	// MaxHandshakesPerSource caps the SNI handshake slots one source
	// address (IPv6: one /64) may hold, so one source cannot take them all
	// and lock every session's SNI clients out. 0: no limit.
	MaxHandshakesPerSource int
	// MaxConnsPerSource caps concurrent tunnel connections from one source
	// address (IPv6: one /64), both modes, all sessions. 0: no limit.
	MaxConnsPerSource int
	// MaxConnsPerSession caps concurrent tunnel connections to one session,
	// both modes. When full, a pre-authentication connection makes room.
	MaxConnsPerSession int
	// MaxPreauthPerSession caps a session's connections that have not
	// authenticated yet; a new one then closes the oldest of the source
	// holding the most. Kept under the VM's max_connections (20), so
	// unauthenticated sockets can never fill PostgreSQL.
	MaxPreauthPerSession int
	// AuthTimeout closes a connection that has not authenticated this long
	// after accept (see authWatch for what "authenticated" can mean from
	// outside TLS).
	AuthTimeout time.Duration
	// Certificate answers TLS clients the tunnel cannot route (unknown session),
	// so they get a readable PostgreSQL error. Nil: a self-signed one is made.
	Certificate *tls.Certificate
}

// DefaultConfig returns the settings used when a flag is not given.
func DefaultConfig() Config {
	return Config{
		PortBind:         netip.MustParseAddr("127.0.0.1"),
		Domain:           "pg.localhost",
		GuestPort:        5432,
		HandshakeTimeout: 15 * time.Second,
		DialTimeout:      30 * time.Second,
		MaxHelloSize:     16 << 10,
		MaxHandshakes:    1024,

		MaxHandshakesPerSource: 64,
		MaxConnsPerSource:      128,
		MaxConnsPerSession:     128,
		MaxPreauthPerSession:   10,
		AuthTimeout:            30 * time.Second,
	}
}

// Tunnel serves both modes. Close ends every listener and connection.
type Tunnel struct {
	cfg    Config
	lookup LookupFunc
	log    *slog.Logger
	m      *metrics
	tlsCfg *tls.Config

	handshakes chan struct{} // semaphore of MaxHandshakes
	hsSources  *counter      // SNI handshakes per source
	sources    *counter      // connections per source
	guard      *guard        // connections per session

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	ports    map[uint16]string     // port -> session id
	sessions map[string]*portEntry // session id -> its port, or why it has none
	next     uint16                // where the next port search starts
}

// portEntry is what Attach gave a session: a port, or the error that
// says why it has none. The API shows either.
type portEntry struct {
	port uint16
	err  error
}

// New makes a tunnel. reg receives its metrics (may be nil).
func New(cfg Config, lookup LookupFunc, logger *slog.Logger, reg prometheus.Registerer) (*Tunnel, error) {
	if lookup == nil {
		return nil, errors.New("tunnel needs a session lookup")
	}
	if cfg.PortFirst != 0 && (cfg.PortLast < cfg.PortFirst) {
		return nil, fmt.Errorf("bad tunnel port range %d-%d", cfg.PortFirst, cfg.PortLast)
	}
	if cfg.GuestPort == 0 || cfg.HandshakeTimeout <= 0 || cfg.DialTimeout <= 0 || cfg.MaxHelloSize < 512 || cfg.MaxHandshakes <= 0 {
		return nil, errors.New("tunnel config needs GuestPort, HandshakeTimeout, DialTimeout, MaxHandshakes and MaxHelloSize >= 512")
	}
	if cfg.MaxHandshakesPerSource < 0 || cfg.MaxConnsPerSource < 0 || cfg.MaxConnsPerSession <= 0 || cfg.MaxPreauthPerSession <= 0 || cfg.AuthTimeout <= 0 {
		return nil, errors.New("tunnel config needs MaxConnsPerSession, MaxPreauthPerSession and AuthTimeout above 0, and per-source limits of 0 (off) or more")
	}
	cfg.Domain = strings.ToLower(strings.Trim(cfg.Domain, "."))
	if cfg.Domain == "" {
		return nil, errors.New("tunnel config needs a Domain")
	}
	cert := cfg.Certificate
	if cert == nil {
		c, err := selfSignedCert("*." + cfg.Domain)
		if err != nil {
			return nil, err
		}
		cert = &c
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Tunnel{
		cfg:    cfg,
		lookup: lookup,
		log:    logger,
		m:      m,
		tlsCfg: &tls.Config{
			Certificates: []tls.Certificate{*cert},
			MinVersion:   tls.VersionTLS12,
			// libpq 17 refuses a direct-TLS server that does not pick this ALPN.
			NextProtos: []string{"postgresql"},
		},
		handshakes: make(chan struct{}, cfg.MaxHandshakes),
		hsSources:  newCounter(cfg.MaxHandshakesPerSource),
		sources:    newCounter(cfg.MaxConnsPerSource),
		guard:      newGuard(cfg.MaxConnsPerSession, cfg.MaxPreauthPerSession),
		ctx:        ctx,
		cancel:     cancel,
		ports:      map[uint16]string{},
		sessions:   map[string]*portEntry{},
		next:       cfg.PortFirst,
	}, nil
}

// Host returns the SNI host name for a session id.
func (t *Tunnel) Host(id string) string { return id + "." + t.cfg.Domain }

// Domain returns the SNI domain.
func (t *Tunnel) Domain() string { return t.cfg.Domain }

// PortsEnabled reports whether port mode is on.
func (t *Tunnel) PortsEnabled() bool { return t.cfg.PortFirst != 0 }

// Close stops all listeners and connections and waits for their goroutines.
func (t *Tunnel) Close() error {
	t.cancel()
	t.wg.Wait()
	return nil
}

// sessionID maps a TLS server name to a session id, or "" if it is not one
// of ours.
func (t *Tunnel) sessionID(serverName string) string {
	name := strings.ToLower(strings.TrimSuffix(serverName, "."))
	id, ok := strings.CutSuffix(name, "."+t.cfg.Domain)
	if !ok || id == "" || strings.Contains(id, ".") {
		return ""
	}
	return id
}

// dialGuest connects to PostgreSQL inside the session's VM.
func (t *Tunnel) dialGuest(ctx context.Context, s Session) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.DialTimeout)
	defer cancel()
	c, err := s.DialGuest(ctx, t.cfg.GuestPort)
	if err != nil {
		return nil, fmt.Errorf("cannot dial port %d in the VM: %w", t.cfg.GuestPort, err)
	}
	return c, nil
}

// admit counts tc in its session's limits and arms its authentication
// deadline. Pre-authentication connections it evicts to make room are
// closed here. false: the session is full of authenticated connections.
func (t *Tunnel) admit(tc *tracked) bool {
	victims, ok := t.guard.admit(tc)
	for _, v := range victims {
		t.m.preauth.Dec()
		t.m.preauthClosed.WithLabelValues("evicted").Inc()
		t.log.Debug("tunnel closed a connection that had not authenticated, to make room", "session", v.session, "source", v.src.String())
		v.kill()
	}
	if !ok {
		return false
	}
	t.m.preauth.Inc()
	tc.timer = time.AfterFunc(t.cfg.AuthTimeout-time.Since(tc.start), func() {
		if t.guard.expire(tc) {
			t.m.preauth.Dec()
			t.m.preauthClosed.WithLabelValues("deadline").Inc()
			t.log.Debug("tunnel closed a connection that did not authenticate in time", "session", tc.session, "source", tc.src.String())
			tc.kill()
		}
	})
	return true
}

// authenticated ends tc's deadline: the VM's PostgreSQL accepted it.
func (t *Tunnel) authenticated(tc *tracked) {
	if t.guard.authed(tc) {
		tc.timer.Stop()
		t.m.preauth.Dec()
		observeSince(t.m.auth, tc.start)
	}
}

// untrack removes a closed connection from its session's limits.
func (t *Tunnel) untrack(tc *tracked) {
	tc.timer.Stop()
	if t.guard.leave(tc) == statePreauth {
		t.m.preauth.Dec()
	}
}

// watch follows tc's start; tls: the splice begins inside TLS (SNI mode).
func (t *Tunnel) watch(tc *tracked, tls bool) *authWatch {
	return newAuthWatch(tls, authRecordMin, func() { t.authenticated(tc) })
}
