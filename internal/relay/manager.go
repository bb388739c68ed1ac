// Package relay gives each browser VM its own virtual network: a websocket
// carries the VM's Ethernet frames (one frame per binary message, as v86
// sends them) to a per-session user-space TCP/IP stack with DHCP, DNS and a
// NAT to the internet under an egress policy. Sessions are isolated from
// each other, limited, survive websocket reconnects, and are measured.
//
// The server creates a session, gives the page its ID and token, and mounts
// the Manager at /relay/; the page points v86 at
// ws(s)://host/relay/{id}?token={token}.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgwasm/pgwasm/internal/services/dns"
)

// Errors from Create and Delete.
var (
	ErrTooManySessions          = errors.New("too many relay sessions")
	ErrTooManySessionsForClient = errors.New("too many relay sessions for this client")
	ErrUnknownSession           = errors.New("unknown relay session")
	ErrClosed                   = errors.New("relay manager closed")
)

// Manager owns every session.
type Manager struct {
	cfg          Config
	log          *slog.Logger
	metrics      *metrics
	dnsUpstreams []string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	sessions map[string]*Session
	pending  int // sessions being built; they count against MaxSessions
	byClient map[netip.Addr]int
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
	m := &Manager{
		cfg:          cfg,
		log:          logger.With("component", "relay"),
		metrics:      met,
		dnsUpstreams: ups,
		sessions:     make(map[string]*Session),
		byClient:     make(map[netip.Addr]int),
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Add(1)
	go m.janitor()
	return m, nil
}

// Create makes a session for the HTTP client at clientAddr.
func (m *Manager) Create(ctx context.Context, clientAddr netip.Addr) (*Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	clientAddr = clientAddr.Unmap()
	m.mu.Lock()
	switch {
	case m.closed:
		m.mu.Unlock()
		return nil, ErrClosed
	case len(m.sessions)+m.pending >= m.cfg.MaxSessions:
		m.mu.Unlock()
		m.metrics.sessionRefused.WithLabelValues("total-limit").Inc()
		return nil, ErrTooManySessions
	case m.byClient[clientAddr] >= m.cfg.MaxSessionsPerClient:
		m.mu.Unlock()
		m.metrics.sessionRefused.WithLabelValues("client-limit").Inc()
		return nil, ErrTooManySessionsForClient
	}
	// Hold the slot while the stack is built outside the lock.
	m.byClient[clientAddr]++
	m.pending++
	m.mu.Unlock()

	s, err := newSession(m, clientAddr)

	m.mu.Lock()
	defer m.mu.Unlock()
	m.pending--
	if err != nil || m.closed {
		m.releaseClient(clientAddr)
		if err == nil {
			go s.endDetached()
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("cannot create relay session: %w", err)
	}
	m.sessions[s.id] = s
	m.metrics.sessions.Inc()
	m.metrics.sessionsTotal.Inc()
	s.log.Info("session created")
	return s, nil
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
	s.end("deleted")
	return nil
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
