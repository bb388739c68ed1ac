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
	if !t.PortsEnabled() {
		return 0, ErrPortsDisabled
	}
	if t.ctx.Err() != nil {
		return 0, ErrClosed
	}
	ln, port, err := t.allocate(ctx, s.ID())
	if err != nil {
		return 0, err
	}
	log := t.log.With("session", s.ID(), "port", port)
	log.Info("tunnel port open")
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		select {
		case <-s.Done():
		case <-t.ctx.Done():
		}
		ln.Close()
	}()
	go func() {
		defer t.wg.Done()
		defer t.release(port)
		t.acceptPort(ln, s, log)
		log.Info("tunnel port closed")
	}()
	return port, nil
}

func (t *Tunnel) allocate(ctx context.Context, id string) (net.Listener, uint16, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	size := int(t.cfg.PortLast) - int(t.cfg.PortFirst) + 1
	var lc net.ListenConfig
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
		t.ports[p] = id
		t.m.portsUsed.Inc()
		return ln, p, nil
	}
	return nil, 0, fmt.Errorf("%w in %d-%d", ErrNoFreePort, t.cfg.PortFirst, t.cfg.PortLast)
}

func (t *Tunnel) release(port uint16) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.ports, port)
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
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.handlePort(c, s, log.With("remote", c.RemoteAddr().String()))
		}()
	}
}

// handlePort passes the connection through untouched: the client negotiates
// TLS with the VM's PostgreSQL itself.
func (t *Tunnel) handlePort(c net.Conn, s Session, log *slog.Logger) {
	start := time.Now()
	guest, err := t.dialGuest(t.ctx, s)
	if err != nil {
		t.m.conns.WithLabelValues("port", "dial_error").Inc()
		log.Warn("tunnel cannot reach the VM", "err", err)
		t.refuseClear(c, "cannot reach PostgreSQL in the browser tab: "+err.Error())
		return
	}
	t.m.conns.WithLabelValues("port", "ok").Inc()
	observeSince(t.m.setup.WithLabelValues("port"), start)
	log.Debug("tunnel connection open")
	t.splice(s, "port", c, c, guest)
	log.Debug("tunnel connection closed")
}

// refuseClear answers a client we could not connect with a readable
// PostgreSQL error over the plaintext protocol, then closes.
func (t *Tunnel) refuseClear(c net.Conn, msg string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	br := bufio.NewReader(c)
	kind, _, err := readFirstMessage(br)
	if err != nil || kind == kindDirectTLS {
		return
	}
	refusePlain(br, c, kind, fatal("08006", msg, ""))
}
