package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/tunnel"
)

// RelaySessions adapts a relay.Manager to the API's Sessions.
type RelaySessions struct {
	m *relay.Manager
	// Lazy: Create only mints the token (relay.Manager.Mint).
	Lazy bool
}

// ticket is a minted session as the API sees it: no network yet, so no
// tunnel either.
type ticket struct{ *relay.Ticket }

func (ticket) DialGuest(context.Context, uint16) (net.Conn, error) {
	return nil, errors.New("session not started: no websocket has reached it yet")
}

func (ticket) Done() <-chan struct{} { return nil }

// NewRelaySessions wraps m.
func NewRelaySessions(m *relay.Manager) *RelaySessions {
	return &RelaySessions{m: m}
}

// Create implements Sessions.
func (r *RelaySessions) Create(ctx context.Context, client netip.Addr) (Session, error) {
	if r.Lazy {
		t, err := r.m.Mint()
		if errors.Is(err, relay.ErrDraining) {
			return nil, fmt.Errorf("%w: %w", ErrDraining, err)
		}
		if err != nil {
			return nil, err
		}
		return ticket{t}, nil
	}
	s, err := r.m.Create(ctx, client)
	if err != nil {
		if errors.Is(err, relay.ErrDraining) {
			return nil, fmt.Errorf("%w: %w", ErrDraining, err)
		}
		if errors.Is(err, relay.ErrTooManySessions) || errors.Is(err, relay.ErrTooManySessionsForClient) {
			return nil, fmt.Errorf("%w: %w", ErrLimit, err)
		}
		return nil, err
	}
	return s, nil
}

// Lookup implements Sessions.
func (r *RelaySessions) Lookup(id string) (Session, bool) {
	s, ok := r.m.Lookup(id)
	if !ok {
		return nil, false
	}
	return s, true
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
