package tunnel

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Attach gives session s its own port. The listener closes when the session
// ends or the tunnel closes. It returns ErrPortsDisabled or ErrNoFreePort
// when it cannot; the session itself is not touched.
func (t *Tunnel) Attach(ctx context.Context, s Session) (uint16, error) {
	return t.AttachPreferring(ctx, s, 0)
}

// AttachPreferring is Attach that takes port want if it is in the range
// and free, and any free port otherwise. A session re-created after a
// restart asks for the port it had, so its connection string keeps working.
// Port tells the outcome until the session ends.
func (t *Tunnel) AttachPreferring(ctx context.Context, s Session, want uint16) (uint16, error) {
	if !t.PortsEnabled() {
		return 0, ErrPortsDisabled
	}
	if t.ctx.Err() != nil {
		return 0, ErrClosed
	}
	ln, port, err := t.allocate(ctx, s.ID(), want)
	if err != nil {
		t.rememberFailure(s, err)
		return 0, err
	}
	log := t.log.With("session", s.ID(), "port", port)
	if want != 0 {
		log.Info("tunnel port open", "wanted", want)
	} else {
		log.Info("tunnel port open")
	}
	t.atEnd(s, func() { ln.Close() })
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer t.release(port)
		t.acceptPort(ln, s, log)
		log.Info("tunnel port closed")
	}()
	return port, nil
}

// Port returns the port session id was given, or the error that says why
// it has none; 0 and nil when it never asked (port mode off, or a session
// this tunnel has not seen).
func (t *Tunnel) Port(id string) (uint16, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.sessions[id]
	if e == nil {
		return 0, nil
	}
	return e.port, e.err
}

// rememberFailure keeps why s has no port until s ends.
func (t *Tunnel) rememberFailure(s Session, err error) {
	e := &portEntry{err: err}
	t.mu.Lock()
	t.sessions[s.ID()] = e
	t.mu.Unlock()
	t.atEnd(s, func() {
		t.mu.Lock()
		if t.sessions[s.ID()] == e {
			delete(t.sessions, s.ID())
		}
		t.mu.Unlock()
	})
}

// atEnd calls f once s ends or the tunnel closes.
func (t *Tunnel) atEnd(s Session, f func()) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		select {
		case <-s.Done():
		case <-t.ctx.Done():
		}
		f()
	}()
}

func (t *Tunnel) allocate(ctx context.Context, id string, want uint16) (net.Listener, uint16, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	size := int(t.cfg.PortLast) - int(t.cfg.PortFirst) + 1
	var lc net.ListenConfig
	if _, used := t.ports[want]; !used && want >= t.cfg.PortFirst && want <= t.cfg.PortLast {
		ln, err := lc.Listen(ctx, "tcp", netip.AddrPortFrom(t.cfg.PortBind, want).String())
		if err == nil {
			t.take(want, id)
			return ln, want, nil
		}
		t.log.Debug("wanted tunnel port unavailable", "port", want, "err", err)
	}
	// New ports go round the range, so a freed port is reused as late as
	// possible (an old connection string then rarely reaches another VM).
	for range size {
		p := t.next
		if t.next == t.cfg.PortLast {
			t.next = t.cfg.PortFirst
		} else {
			t.next++
		}
		if _, used := t.ports[p]; used {
			continue
		}
		// Another process may hold a port of the range: skip it.
		ln, err := lc.Listen(ctx, "tcp", netip.AddrPortFrom(t.cfg.PortBind, p).String())
		if err != nil {
			t.log.Debug("tunnel port unavailable", "port", p, "err", err)
			continue
		}
		t.take(p, id)
		return ln, p, nil
	}
	return nil, 0, fmt.Errorf("%w in %d-%d", ErrNoFreePort, t.cfg.PortFirst, t.cfg.PortLast)
}

// take records port as session id's; t.mu is held.
func (t *Tunnel) take(port uint16, id string) {
	t.ports[port] = id
	t.sessions[id] = &portEntry{port: port}
	t.m.portsUsed.Inc()
}

func (t *Tunnel) release(port uint16) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := t.ports[port]
	delete(t.ports, port)
	if e := t.sessions[id]; e != nil && e.port == port {
		delete(t.sessions, id)
	}
	t.m.portsUsed.Dec()
}

func (t *Tunnel) acceptPort(ln net.Listener, s Session, log *slog.Logger) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if isClosed(err) {
				return
			}
			log.Warn("tunnel accept failed", "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-t.ctx.Done():
				return
			}
		}
		src := sourceKey(c.RemoteAddr())
		if !t.sources.acquire(src) {
			// Closed at once, without a message: answering costs a
			// goroutine and, for TLS, a handshake, which is what a flood wants.
			t.m.conns.WithLabelValues("port", "source_limit").Inc()
			log.Debug("tunnel refused a connection: too many from its source", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.sources.release(src)
			t.handlePort(c, s, log.With("remote", c.RemoteAddr().String()))
		}()
	}
}

// handlePort passes the connection through untouched: the client negotiates
// TLS with the VM's PostgreSQL itself.
func (t *Tunnel) handlePort(c net.Conn, s Session, log *slog.Logger) {
	start := time.Now()
	tc := newTracked(s.ID(), c, start)
	if !t.admit(tc) {
		t.m.conns.WithLabelValues("port", "session_limit").Inc()
		log.Warn("tunnel refused a connection: the session is full", "limit", t.cfg.MaxConnsPerSession)
		t.refuseStart(c, bufio.NewReader(c), fatal("53300", msgSessionFull, hintSessionFull), log)
		return
	}
	defer t.untrack(tc)
	// Dial the VM only once the client has said something: an idle socket
	// then costs PostgreSQL nothing (each connection is a fork in the VM,
	// and the slowest thing there), and the deadline closes it.
	br := bufio.NewReader(c)
	peeked := make(chan struct{})
	go func() {
		select {
		case <-s.Done():
		case <-t.ctx.Done():
		case <-peeked:
			return
		}
		c.Close()
	}()
	_, err := br.Peek(1)
	close(peeked)
	if err != nil {
		t.m.conns.WithLabelValues("port", "idle").Inc()
		c.Close()
		return
	}
	guest, err := t.dialGuest(t.ctx, s)
	if err != nil {
		t.m.conns.WithLabelValues("port", "dial_error").Inc()
		log.Warn("tunnel cannot reach the VM", "err", err)
		t.refuseStart(c, br, fatal("08006", "cannot reach PostgreSQL in the browser tab: "+err.Error(), ""), log)
		return
	}
	if !tc.addConn(guest) {
		// Evicted or out of time while dialling.
		t.m.conns.WithLabelValues("port", "preauth_closed").Inc()
		guest.Close()
		return
	}
	t.m.conns.WithLabelValues("port", "ok").Inc()
	observeSince(t.m.setup.WithLabelValues("port"), start)
	log.Debug("tunnel connection open")
	t.splice(s, "port", c, br, guest, t.watch(tc, false))
	log.Debug("tunnel connection closed")
}

// refuseStart answers a client the tunnel could not connect with a readable
// PostgreSQL error, in the form the client asked for, then closes. An
// SSLRequest gets 'S' and the error inside TLS, with the tunnel's own
// certificate as in SNI mode for unknown sessions (declining TLS would make
// libpq with sslmode=require say only "server does not support SSL"); a
// direct TLS start gets the same; a plain StartupMessage gets it in clear.
// No user data passes: the connection goes nowhere.
func (t *Tunnel) refuseStart(c net.Conn, br *bufio.Reader, errMsg []byte, log *slog.Logger) {
	c.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	kind, _, err := readFirstMessage(br)
	for n := 0; err == nil && kind == kindGSSENCRequest && n < 2; n++ {
		// Decline GSS encryption; libpq then asks for TLS or starts plain.
		if _, err = c.Write([]byte{'N'}); err == nil {
			kind, _, err = readFirstMessage(br)
		}
	}
	if err != nil {
		log.Debug("tunnel cannot read the client's start", "err", err)
		c.Close()
		return
	}
	switch kind {
	case kindSSLRequest:
		if _, err := c.Write([]byte{'S'}); err != nil {
			c.Close()
			return
		}
		t.refuseTLS(c, nil, br, errMsg, log)
	case kindDirectTLS:
		t.refuseTLS(c, nil, br, errMsg, log)
	case kindStartup:
		if _, err := c.Write(errMsg); err != nil {
			log.Debug("tunnel cannot send the error", "err", err)
		}
		c.Close()
	default: // a CancelRequest: nothing to cancel
		c.Close()
	}
}
