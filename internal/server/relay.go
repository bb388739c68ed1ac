package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/tunnel"
)

// RelaySessions adapts a relay.Manager to the API's Sessions.
type RelaySessions struct {
	m        *relay.Manager
	lifetime time.Duration

	mu      sync.Mutex
	expires map[string]time.Time
}

// NewRelaySessions wraps m; lifetime is the relay's Config.Lifetime, from
// which expires_at is computed (idle and grace timeouts may end a session
// sooner).
func NewRelaySessions(m *relay.Manager, lifetime time.Duration) *RelaySessions {
	return &RelaySessions{m: m, lifetime: lifetime, expires: map[string]time.Time{}}
}

type relaySession struct {
	*relay.Session
	expires time.Time
}

func (s relaySession) ExpiresAt() time.Time { return s.expires }

// Create implements Sessions.
func (r *RelaySessions) Create(ctx context.Context, client netip.Addr) (Session, error) {
	s, err := r.m.Create(ctx, client)
	if err != nil {
		if errors.Is(err, relay.ErrTooManySessions) || errors.Is(err, relay.ErrTooManySessionsForClient) {
			return nil, fmt.Errorf("%w: %w", ErrLimit, err)
		}
		return nil, err
	}
	exp := time.Now().Add(r.lifetime)
	r.mu.Lock()
	r.expires[s.ID()] = exp
	r.mu.Unlock()
	go func() {
		<-s.Done()
		r.mu.Lock()
		delete(r.expires, s.ID())
		r.mu.Unlock()
	}()
	return relaySession{s, exp}, nil
}

// Lookup implements Sessions.
func (r *RelaySessions) Lookup(id string) (Session, bool) {
	s, ok := r.m.Lookup(id)
	if !ok {
		return nil, false
	}
	r.mu.Lock()
	exp := r.expires[id]
	r.mu.Unlock()
	return relaySession{s, exp}, true
}

// Delete implements Sessions.
func (r *RelaySessions) Delete(id string) error { return r.m.Delete(id) }

// TunnelLookup finds sessions for the tunnel.
func (r *RelaySessions) TunnelLookup(id string) (tunnel.Session, bool) {
	s, ok := r.m.Lookup(id)
	if !ok {
		return nil, false
	}
	return s, true
}
