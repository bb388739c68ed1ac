package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// ServeSNI accepts connections on ln and routes each by its TLS server name
// until ctx ends or the tunnel closes. It closes ln.
func (t *Tunnel) ServeSNI(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	stopT := context.AfterFunc(t.ctx, func() { ln.Close() })
	defer stopT()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if err != nil {
			if isClosed(err) || ctx.Err() != nil || t.ctx.Err() != nil {
				return nil
			}
			t.log.Warn("tunnel accept failed", "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		// Refusals here close at once, without a message: answering a
		// flood costs what the limits are there to save.
		src := sourceKey(c.RemoteAddr())
		if !t.sources.acquire(src) {
			t.m.conns.WithLabelValues("sni", "source_limit").Inc()
			t.log.Debug("tunnel refused a connection: too many from its source", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		if !t.hsSources.acquire(src) {
			t.sources.release(src)
			t.m.conns.WithLabelValues("sni", "source_overload").Inc()
			t.log.Debug("tunnel refused a connection: too many handshakes from its source", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		select {
		case t.handshakes <- struct{}{}:
		default:
			t.hsSources.release(src)
			t.sources.release(src)
			t.m.conns.WithLabelValues("sni", "overload").Inc()
			t.log.Warn("tunnel refused a connection: too many handshakes", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.sources.release(src)
			t.handleSNI(c, src, t.log.With("mode", "sni", "remote", c.RemoteAddr().String()))
		}()
	}
}

// Error texts a client may see; the hints tell the user what to change.
const (
	msgNeedTLS   = "this port routes connections by TLS server name, and this one has no TLS"
	hintNeedTLS  = "Use the connection string shown on the page: sslmode=require and host=<session>.%s (with hostaddr=... if the name does not resolve)."
	msgNoSession = "no such session %q: the browser tab may have been closed or its network stopped"
	msgNoName    = "the TLS server name %q is not <session>.%s"

	msgSessionFull  = "too many connections to this browser tab through the tunnel"
	hintSessionFull = "Close connections you no longer use; the server's --tunnel-max-conns-per-session sets the limit."
)

// handleSNI routes one connection by its TLS server name to its session's
// VM. Every way out counts one result in pgwasm_tunnel_connections_total.
func (t *Tunnel) handleSNI(c net.Conn, src netip.Prefix, log *slog.Logger) {
	var releaseOnce sync.Once
	release := func() {
		releaseOnce.Do(func() {
			<-t.handshakes
			t.hsSources.release(src)
		})
	}
	defer release()
	start := time.Now()
	var result string // every return below sets it
	defer func() { t.m.conns.WithLabelValues("sni", result).Inc() }()

	c.SetDeadline(start.Add(t.cfg.HandshakeTimeout))
	br := bufio.NewReaderSize(c, 4096)
	kind, result := t.sniStart(c, br, log)
	if result != "" {
		return
	}
	raw, hello, err := readClientHello(br, t.cfg.MaxHelloSize)
	if err != nil {
		result = "bad_handshake"
		log.Warn("tunnel cannot read ClientHello", "start", kind.String(), "err", err)
		c.Close()
		return
	}
	log = log.With("start", kind.String(), "sni", hello.ServerName)
	refuse := func(res, code, msg, hint string) {
		result = res
		t.refuseTLS(c, raw, br, fatal(code, msg, hint), log)
	}
	s, id := t.sniSession(hello.ServerName)
	switch {
	case id == "":
		log.Info("tunnel refused an unknown server name")
		refuse("bad_name", "08004", fmt.Sprintf(msgNoName, hello.ServerName, t.cfg.Domain), fmt.Sprintf(hintNeedTLS, t.cfg.Domain))
		return
	case s == nil:
		log.Info("tunnel refused an unknown session", "session", id)
		refuse("unknown_session", "08004", fmt.Sprintf(msgNoSession, id), "")
		return
	}
	log = log.With("session", id)

	tc := newTracked(id, c, start)
	if !t.admit(tc) {
		log.Warn("tunnel refused a connection: the session is full", "limit", t.cfg.MaxConnsPerSession)
		refuse("session_limit", "53300", msgSessionFull, hintSessionFull)
		return
	}
	defer t.untrack(tc)
	guest := t.sniGuest(s, kind, hello, start, log, refuse)
	if guest == nil {
		return
	}
	result = t.sniSplice(s, tc, c, br, guest, raw, release, log)
}

// sniSplice passes the client's ClientHello on to the VM, then splices the
// two connections until either side ends; it returns the result for the
// metrics. release ends the handshake's hold on the limits.
func (t *Tunnel) sniSplice(s Session, tc *tracked, c net.Conn, br *bufio.Reader, guest net.Conn, raw []byte, release func(), log *slog.Logger) string {
	// A direct-TLS hello goes as is: PostgreSQL 17 in the VM takes direct TLS.
	guest.SetWriteDeadline(tc.start.Add(t.cfg.HandshakeTimeout))
	if _, err := guest.Write(raw); err != nil {
		guest.Close()
		c.Close()
		log.Warn("tunnel cannot forward the ClientHello", "err", err)
		return "dial_error"
	}
	if !tc.addConn(guest) {
		// Evicted or out of time while dialling.
		guest.Close()
		return "preauth_closed"
	}
	guest.SetDeadline(time.Time{})
	c.SetDeadline(time.Time{})
	release()
	observeSince(t.m.setup.WithLabelValues("sni"), tc.start)
	log.Debug("tunnel connection open")
	t.splice(s, "sni", c, br, guest, t.watch(tc, true))
	log.Debug("tunnel connection closed")
	return "ok"
}

// sniStart reads the client's start up to its ClientHello: a direct TLS
// start, or an SSLRequest it answers with 'S'; then it returns "". Any
// other start it answers and closes, and returns its result for the
// metrics.
func (t *Tunnel) sniStart(c net.Conn, br *bufio.Reader, log *slog.Logger) (firstKind, string) {
	kind, _, err := readFirstMessage(br)
	for n := 0; err == nil && kind == kindGSSENCRequest && n < 2; n++ {
		// Decline GSS encryption; libpq then asks for TLS.
		if _, err = c.Write([]byte{'N'}); err == nil {
			kind, _, err = readFirstMessage(br)
		}
	}
	if err != nil {
		c.Close()
		if errors.Is(err, errGarbage) {
			log.Warn("tunnel handshake failed", "err", err)
		} else {
			log.Debug("tunnel handshake failed", "err", err)
		}
		return kind, "bad_handshake"
	}
	switch kind {
	case kindStartup:
		log.Info("tunnel refused a plaintext connection")
		c.Write(fatal("28000", msgNeedTLS, fmt.Sprintf(hintNeedTLS, t.cfg.Domain)))
		c.Close()
		return kind, "no_tls"
	case kindCancelRequest:
		// A plaintext cancel carries no server name, so it cannot be routed.
		c.Close()
		return kind, "cancel"
	case kindSSLRequest:
		if _, err := c.Write([]byte{'S'}); err != nil {
			c.Close()
			return kind, "bad_handshake"
		}
	case kindGSSENCRequest:
		c.Close()
		return kind, "bad_handshake"
	}
	return kind, ""
}

// sniSession finds the live session a server name routes to. id is ""
// when the name is not <session>.<domain>; s is nil when no such session
// lives here.
func (t *Tunnel) sniSession(serverName string) (s Session, id string) {
	id = t.sessionID(serverName)
	if id == "" {
		return nil, ""
	}
	s, ok := t.lookup(id)
	if !ok {
		return nil, id
	}
	select {
	case <-s.Done():
		return nil, id
	default:
		return s, id
	}
}

// sniGuest connects to PostgreSQL in s's VM, ready for the client's
// ClientHello, or refuses the client and returns nil.
func (t *Tunnel) sniGuest(s Session, kind firstKind, hello *clientHello, start time.Time, log *slog.Logger, refuse func(result, code, msg, hint string)) net.Conn {
	guest, err := t.dialGuest(t.ctx, s)
	if err != nil {
		log.Warn("tunnel cannot reach the VM", "err", err)
		refuse("dial_error", "08006", "cannot reach PostgreSQL in the browser tab: "+err.Error(), "")
		return nil
	}
	if kind == kindSSLRequest || !slices.Contains(hello.ALPN, "postgresql") {
		// The client already has our 'S'; ask the VM the same question.
		// A hello at byte 0 without ALPN "postgresql" comes from a
		// proxy that answered the client's SSLRequest itself (the
		// cluster's HAProxy, deploy/haproxy) for a libpq before 17;
		// PostgreSQL 17 refuses direct TLS without that ALPN, so ask
		// the classic way for it too.
		if err := askTLS(guest, start.Add(t.cfg.HandshakeTimeout)); err != nil {
			guest.Close()
			log.Warn("tunnel: the VM did not accept TLS", "err", err)
			refuse("vm_no_tls", "08006", "PostgreSQL in the browser tab does not accept TLS: "+err.Error(), "")
			return nil
		}
	}
	return guest
}

// askTLS sends an SSLRequest to the VM and expects 'S'.
func askTLS(guest net.Conn, deadline time.Time) error {
	guest.SetDeadline(deadline)
	if _, err := guest.Write(sslRequest()); err != nil {
		return fmt.Errorf("cannot send SSLRequest: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(guest, b[:]); err != nil {
		return fmt.Errorf("cannot read SSLRequest answer: %w", err)
	}
	if b[0] != 'S' {
		return fmt.Errorf("SSLRequest answered %q", b[0])
	}
	return nil
}

// refuseTLS finishes the TLS handshake the client started, with the tunnel's
// own certificate, and sends errMsg inside TLS. This is the only case where
// the tunnel terminates TLS: the connection goes nowhere, and a readable
// "no such session" beats a silent hang-up.
func (t *Tunnel) refuseTLS(c net.Conn, hello []byte, rest io.Reader, errMsg []byte, log *slog.Logger) {
	defer c.Close()
	tc := tls.Server(newReplayConn(c, hello, rest), t.tlsCfg)
	defer tc.Close()
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		log.Debug("tunnel error handshake failed", "err", err)
		return
	}
	br := bufio.NewReader(tc)
	kind, _, err := readFirstMessage(br)
	if err != nil || kind == kindDirectTLS {
		return
	}
	if err := refusePlain(br, tc, kind, errMsg); err != nil {
		log.Debug("tunnel cannot send the error", "err", err)
	}
}
