// Package relay gives each browser VM its own virtual network: a websocket
// carries the VM's Ethernet frames (one frame per binary message, as v86
// sends them) to a per-session user-space TCP/IP stack with DHCP, DNS and a
// NAT to the internet under an egress policy. Sessions are isolated from
// each other, limited, survive websocket reconnects, and are measured.
//
// The server creates a session, gives the page its ID and token, and mounts
// the Manager at /relay/; the page points v86 at
// ws(s)://host/relay/{id}?token={token}.
//
// Tokens are signed with Config.SessionSecret, so a session outlives the
// process: when a websocket arrives for an id this Manager does not know
// (the server restarted, or another server with the same secret made it)
// and its token verifies and has not expired, the session is re-created
// with the same id, creation time and token, and a fresh network (the VM
// keeps its address; its open TCP connections through the NAT are lost).
package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgwasm/pgwasm/internal/services/dns"
)

// Errors from Create and Delete.
var (
	ErrTooManySessions          = errors.New("too many relay sessions")
	ErrTooManySessionsForClient = errors.New("too many relay sessions for this client")
	ErrUnknownSession           = errors.New("unknown relay session")
	ErrClosed                   = errors.New("relay manager closed")
	// ErrDeleted: the session was deleted here; its token no longer
	// re-creates it on this Manager.
	ErrDeleted = errors.New("relay session was deleted")
	// ErrDraining: the server is shutting down and takes no new sessions
	// and no websockets; another server (same secret) will.
	ErrDraining = errors.New("relay is draining: try another server")
)

// StatusDraining is the websocket close code the relay sends when it
// drains (graceful shutdown): the page, the harness and any client should
// reconnect at once, and a load balancer that has taken this server out
// sends them to another, which re-creates the session from its token.
// 4000-4999 is the range RFC 6455 leaves to applications.
const StatusDraining websocket.StatusCode = 4503

// DrainReason is the close reason sent with StatusDraining.
const DrainReason = "draining"

// maxDeleted bounds the ids of deleted sessions a Manager remembers.
const maxDeleted = 100000

// Manager owns every session.
type Manager struct {
	cfg          Config
	log          *slog.Logger
	metrics      *metrics
	dnsUpstreams []string
	secret       []byte

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// draining is read without mu: Session.attach asks while holding
	// its own lock, and the janitor takes a session's lock under mu.
	draining atomic.Bool

	mu       sync.Mutex
	closed   bool
	sessions map[string]*Session
	pending  int // sessions being built; they count against MaxSessions
	byClient map[netip.Addr]int
	// deleted holds ids deleted here until their lifetime ends, so their
	// tokens cannot bring them back on this Manager.
	deleted   map[string]time.Time
	onRestore func(*Session, *http.Request)

	// frameBufs are the sessions' read buffers, MaxFrameSize+1 bytes each.
	frameBufs sync.Pool
}

// NewManager checks cfg and starts the timeout checker. Metrics go to reg
// (nil: not registered).
func NewManager(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ups := cfg.DNSUpstreams
	if len(ups) == 0 {
		var err error
		if ups, err = dns.UpstreamsFromResolvConf(cfg.ResolvConf); err != nil {
			return nil, err
		}
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	secret := cfg.SessionSecret
	if len(secret) == 0 {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, fmt.Errorf("cannot generate a session secret: %w", err)
		}
	}
	m := &Manager{
		cfg:          cfg,
		log:          logger.With("component", "relay"),
		metrics:      met,
		dnsUpstreams: ups,
		secret:       secret,
		sessions:     make(map[string]*Session),
		byClient:     make(map[netip.Addr]int),
		deleted:      make(map[string]time.Time),
	}
	m.frameBufs.New = func() any {
		b := make([]byte, cfg.MaxFrameSize+1)
		return &b
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Add(1)
	go m.janitor()
	return m, nil
}

// Create makes a session for the HTTP client at clientAddr.
func (m *Manager) Create(ctx context.Context, clientAddr netip.Addr) (*Session, error) {
	now := time.Now()
	s, _, err := m.create(ctx, clientAddr, newID(), now, now.Add(m.cfg.Lifetime), false)
	return s, err
}

// Ticket is a session that exists only as its signed token (Mint): its
// network is built by whichever server its websocket reaches first.
type Ticket struct {
	id, token string
	expires   time.Time
}

// ID returns the session id.
func (t *Ticket) ID() string { return t.id }

// Token returns the signed token.
func (t *Ticket) Token() string { return t.token }

// ExpiresAt returns the token's expiry.
func (t *Ticket) ExpiresAt() time.Time { return t.expires }

// Mint makes a new session id and its token without building the session:
// the first websocket with the token re-creates it (as after a restart),
// here or on another server with the same secret. In a cluster this puts
// the network on the replica the load balancer routes the id to, instead
// of on the replica that happened to take the POST. Limits apply then, on
// that server.
func (m *Manager) Mint() (*Ticket, error) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	draining := m.draining.Load()
	switch {
	case closed:
		return nil, ErrClosed
	case draining:
		m.metrics.sessionRefused.WithLabelValues("draining").Inc()
		return nil, ErrDraining
	}
	now := time.Now()
	id, expires := newID(), now.Add(m.cfg.Lifetime)
	return &Ticket{id: id, token: mintToken(m.secret, id, now, expires), expires: sessionEnd(now, expires, m.cfg.Lifetime)}, nil
}

// OnRestore sets a function called with each session re-created from its
// token, and the websocket request that brought it back, before the
// websocket attaches (the serve stack gives it its tunnel port there). Set it
// before serving.
func (m *Manager) OnRestore(f func(*Session, *http.Request)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onRestore = f
}

// restore re-creates session id from a verified token, under the same
// limits as Create. If the session exists by now (a concurrent
// reconnect), it returns that one with fresh false.
func (m *Manager) restore(ctx context.Context, clientAddr netip.Addr, id string, created, expires time.Time) (s *Session, fresh bool, err error) {
	m.mu.Lock()
	_, deleted := m.deleted[id]
	m.mu.Unlock()
	if deleted {
		return nil, false, ErrDeleted
	}
	return m.create(ctx, clientAddr, id, created, expires, true)
}

// create makes session id; fresh is false when restoring found it made.
func (m *Manager) create(ctx context.Context, clientAddr netip.Addr, id string, created, expires time.Time, restored bool) (_ *Session, fresh bool, _ error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	clientAddr = clientAddr.Unmap()
	m.mu.Lock()
	if s, ok := m.sessions[id]; ok && restored {
		m.mu.Unlock()
		return s, false, nil
	}
	switch {
	case m.closed:
		m.mu.Unlock()
		return nil, false, ErrClosed
	case m.draining.Load():
		m.mu.Unlock()
		m.metrics.sessionRefused.WithLabelValues("draining").Inc()
		return nil, false, ErrDraining
	case len(m.sessions)+m.pending >= m.cfg.MaxSessions:
		m.mu.Unlock()
		m.metrics.sessionRefused.WithLabelValues("total-limit").Inc()
		return nil, false, ErrTooManySessions
	case m.byClient[clientAddr] >= m.cfg.MaxSessionsPerClient:
		m.mu.Unlock()
		m.metrics.sessionRefused.WithLabelValues("client-limit").Inc()
		return nil, false, ErrTooManySessionsForClient
	}
	// Hold the slot while the stack is built outside the lock.
	m.byClient[clientAddr]++
	m.pending++
	m.mu.Unlock()

	s, err := newSession(m, clientAddr, id, created, expires)

	m.mu.Lock()
	defer m.mu.Unlock()
	m.pending--
	var existing *Session
	if err == nil && !m.closed {
		existing = m.sessions[id]
	}
	if err != nil || m.closed || existing != nil {
		m.releaseClient(clientAddr)
		if err != nil {
			return nil, false, fmt.Errorf("cannot create relay session: %w", err)
		}
		go s.endDetached()
		if existing != nil {
			return existing, false, nil // a concurrent reconnect restored it first
		}
		return nil, false, ErrClosed
	}
	m.sessions[s.id] = s
	m.metrics.sessions.Inc()
	m.metrics.sessionsTotal.Inc()
	if restored {
		m.metrics.sessionsRestored.Inc()
		s.log.Info("session restored from its token", "created", created.UTC().Format(time.RFC3339))
	} else {
		s.log.Info("session created")
	}
	return s, true, nil
}

func (m *Manager) releaseClient(a netip.Addr) {
	if m.byClient[a] <= 1 {
		delete(m.byClient, a)
	} else {
		m.byClient[a]--
	}
}

// endDetached ends a session that never made it into the registry.
func (s *Session) endDetached() {
	s.ended.Store(true)
	s.cancel()
	s.st.Close()
	s.wg.Wait()
	close(s.done)
}

// Lookup finds a live session.
func (m *Manager) Lookup(id string) (*Session, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sessions[id]
	return s, ok
}

// Len returns the number of live sessions.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// Delete ends a session and waits for it.
func (m *Manager) Delete(id string) error {
	s, ok := m.Lookup(id)
	if !ok {
		return ErrUnknownSession
	}
	m.mu.Lock()
	if len(m.deleted) >= maxDeleted {
		m.pruneDeleted(time.Now())
		for k := range m.deleted {
			if len(m.deleted) < maxDeleted {
				break
			}
			delete(m.deleted, k)
		}
	}
	m.deleted[id] = s.ExpiresAt()
	m.mu.Unlock()
	s.end("deleted")
	return nil
}

// pruneDeleted forgets deleted ids whose tokens have expired anyway.
func (m *Manager) pruneDeleted(now time.Time) {
	for id, exp := range m.deleted {
		if now.After(exp) {
			delete(m.deleted, id)
		}
	}
}

// forget is called by Session.end.
func (m *Manager) forget(s *Session, reason string) {
	m.mu.Lock()
	if m.sessions[s.id] == s {
		delete(m.sessions, s.id)
		m.releaseClient(s.client)
		m.metrics.sessions.Dec()
	}
	m.mu.Unlock()
	m.metrics.sessionsEnded.WithLabelValues(reason).Inc()
}

// janitor ends sessions past their lifetime, idle timeout or grace period.
func (m *Manager) janitor() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.checkInterval())
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case now := <-t.C:
			m.mu.Lock()
			m.pruneDeleted(now)
			var ending []*Session
			var reasons []string
			for _, s := range m.sessions {
				if r := s.expired(now); r != "" {
					ending = append(ending, s)
					reasons = append(reasons, r)
				}
			}
			m.mu.Unlock()
			for i, s := range ending {
				m.wg.Add(1)
				go func() {
					defer m.wg.Done()
					s.end(reasons[i])
				}()
			}
		}
	}
}

// Drain starts a graceful shutdown: from now on the Manager creates and
// re-creates no session and attaches no websocket (ErrDraining; the
// websocket endpoint answers 503). Sessions keep running until Close or
// CloseWebsockets.
func (m *Manager) Drain() {
	if !m.draining.Swap(true) {
		m.log.Info("draining: no new sessions or websockets")
	}
}

// Draining reports whether Drain was called.
func (m *Manager) Draining() bool { return m.draining.Load() }

// CloseWebsockets closes every attached websocket with StatusDraining, so
// each VM reconnects at once (through the load balancer, to another
// server). It implies Drain and waits until each close handshake has ended
// or ctx is done. Sessions stay until Close; it returns the number closed.
func (m *Manager) CloseWebsockets(ctx context.Context) int {
	m.Drain()
	m.mu.Lock()
	var all []*Session
	for _, s := range m.sessions {
		all = append(all, s)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	n := 0
	for _, s := range all {
		s.mu.Lock()
		a := s.att
		s.mu.Unlock()
		if a == nil {
			continue
		}
		n++
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.drain()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	m.metrics.websocketsDrained.Add(float64(n))
	m.log.Info("draining: websockets closed", "count", n)
	return n
}

// Close ends every session and waits for all goroutines.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	var all []*Session
	for _, s := range m.sessions {
		all = append(all, s)
	}
	m.mu.Unlock()
	m.cancel()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.end("shutdown")
		}()
	}
	wg.Wait()
	m.wg.Wait()
	return nil
}
