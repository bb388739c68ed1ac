package tunnel

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// authWatch follows the start of a spliced connection, in both directions,
// as far as it can be seen from outside, and calls onAuth once the client
// looks authenticated. The tunnel never terminates TLS for routed
// connections, so what it can see depends on the start:
//
//   - plaintext (StartupMessage in clear, port mode with sslmode=disable):
//     the server's AuthenticationOk ('R', code 0) or ReadyForQuery ('Z'),
//     exact;
//   - TLS (SSLRequest answered 'S', or a direct TLS start): only the record
//     layer. The signal is the first TLS application-data record of at least
//     minRecord bytes that the server sends after the client has sent
//     application data. PostgreSQL sends the whole post-authentication
//     burst (AuthenticationOk, about 14 ParameterStatus, BackendKeyData,
//     ReadyForQuery: 450-500 bytes) in one flush, while its answers before
//     authentication (AuthenticationSASL, SASLContinue, an ErrorResponse) are
//     100-200 bytes each. The TLS 1.3 server handshake, also application-data
//     records, comes before the client's Finished and is not counted.
//
// A client that crafts its start can make the server say more before
// authentication (many _pq_ options in the StartupMessage, a long SCRAM
// nonce), so over TLS this is a heuristic: it ends idle and stalled
// connections, and the per-source and per-session caps bound the rest
// (docs/serve.md, "Connection limits").
type authWatch struct {
	minRecord int
	onAuth    func()
	fired     atomic.Bool

	mu        sync.Mutex
	state     watchState
	cbuf      []byte // partial client header
	cskip     int    // client record body bytes still to skip
	clientApp bool   // TLS: the client has sent an application-data record
	sbuf      []byte // partial server header
	sskip     int    // server message or record body bytes still to skip
}

type watchState int

const (
	watchNeg    watchState = iota // client negotiation in clear (port mode start)
	watchAnswer                   // SSLRequest or GSSENCRequest sent; next server byte answers
	watchPlain                    // StartupMessage sent in clear; parse server messages
	watchTLS                      // TLS records both ways
	watchOpaque                   // nothing more can be learnt (GSS encryption, pipelining, garbage)
)

const (
	recordTypeAppData = 23
	// authRecordMin separates PostgreSQL's post-authentication burst from
	// its answers before authentication; see authWatch.
	authRecordMin = 256
)

// newAuthWatch starts watching at the client's first byte (port mode) or,
// tls set, at a TLS record boundary after the ClientHello (SNI mode).
func newAuthWatch(tls bool, minRecord int, onAuth func()) *authWatch {
	w := &authWatch{minRecord: minRecord, onAuth: onAuth}
	if tls {
		w.state = watchTLS
	}
	return w
}

// done reports whether the watch is over (authenticated).
func (w *authWatch) done() bool { return w.fired.Load() }

// client sees bytes from the client before they are forwarded to the VM.
func (w *authWatch) client(p []byte) {
	if w.fired.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(p) > 0 {
		switch w.state {
		case watchNeg:
			if len(w.cbuf) == 0 && p[0] == recordTypeHandshake {
				w.state = watchTLS
				continue
			}
			n := min(8-len(w.cbuf), len(p))
			w.cbuf = append(w.cbuf, p[:n]...)
			p = p[n:]
			if len(w.cbuf) < 8 {
				return
			}
			size := binary.BigEndian.Uint32(w.cbuf[:4])
			code := binary.BigEndian.Uint32(w.cbuf[4:])
			w.cbuf = w.cbuf[:0]
			switch {
			case size == 8 && (code == sslRequestCode || code == gssencRequestCode):
				w.state = watchAnswer
			case size >= 8 && size <= maxStartupLen:
				// StartupMessage (or CancelRequest, which never authenticates):
				// the rest of the client side does not matter.
				w.state = watchPlain
				return
			default:
				w.state = watchOpaque
				return
			}
		case watchAnswer:
			// A client that talks before the answer is not libpq; such a
			// start cannot be followed, and it then never counts as
			// authenticated.
			w.state = watchOpaque
			return
		case watchTLS:
			if w.clientApp {
				return
			}
			if w.cskip > 0 {
				n := min(w.cskip, len(p))
				w.cskip -= n
				p = p[n:]
				continue
			}
			n := min(recordHeaderLen-len(w.cbuf), len(p))
			w.cbuf = append(w.cbuf, p[:n]...)
			p = p[n:]
			if len(w.cbuf) < recordHeaderLen {
				return
			}
			if w.cbuf[0] == recordTypeAppData {
				w.clientApp = true
				return
			}
			w.cskip = int(binary.BigEndian.Uint16(w.cbuf[3:5]))
			w.cbuf = w.cbuf[:0]
		default:
			return
		}
	}
}

// server sees bytes from the VM before they are forwarded to the client.
func (w *authWatch) server(p []byte) {
	if w.fired.Load() {
		return
	}
	w.mu.Lock()
	auth := w.serverLocked(p)
	w.mu.Unlock()
	if auth && w.fired.CompareAndSwap(false, true) {
		w.onAuth()
	}
}

func (w *authWatch) serverLocked(p []byte) bool {
	for len(p) > 0 {
		switch w.state {
		case watchAnswer:
			switch p[0] {
			case 'S':
				w.state = watchTLS
			case 'N':
				w.state = watchNeg // the client goes on in clear or asks again
			default:
				w.state = watchOpaque // 'G' (GSS encryption) or an error
			}
			p = p[1:]
		case watchPlain:
			if w.sskip > 0 {
				n := min(w.sskip, len(p))
				w.sskip -= n
				p = p[n:]
				continue
			}
			need := 5
			if len(w.sbuf) >= 1 && w.sbuf[0] == 'R' {
				need = 9 // type, length, authentication code
			}
			n := min(need-len(w.sbuf), len(p))
			w.sbuf = append(w.sbuf, p[:n]...)
			p = p[n:]
			if len(w.sbuf) < need {
				continue
			}
			typ := w.sbuf[0]
			size := int(binary.BigEndian.Uint32(w.sbuf[1:5]))
			if size < 4 {
				w.state = watchOpaque
				return false
			}
			switch {
			case typ == 'Z':
				return true
			case typ == 'R' && size < 8:
				w.state = watchOpaque
				return false
			case typ == 'R' && need == 5:
				continue // read the code too
			case typ == 'R' && size >= 8 && binary.BigEndian.Uint32(w.sbuf[5:9]) == 0:
				return true // AuthenticationOk
			}
			w.sskip = size + 1 - len(w.sbuf)
			w.sbuf = w.sbuf[:0]
		case watchTLS:
			if w.sskip > 0 {
				n := min(w.sskip, len(p))
				w.sskip -= n
				p = p[n:]
				continue
			}
			n := min(recordHeaderLen-len(w.sbuf), len(p))
			w.sbuf = append(w.sbuf, p[:n]...)
			p = p[n:]
			if len(w.sbuf) < recordHeaderLen {
				return false
			}
			size := int(binary.BigEndian.Uint16(w.sbuf[3:5]))
			if w.sbuf[0] == recordTypeAppData && w.clientApp && size >= w.minRecord {
				return true
			}
			w.sskip = size
			w.sbuf = w.sbuf[:0]
		default:
			// watchNeg: the server speaks before the client's start is
			// complete (an error); watchOpaque: nothing to follow.
			return false
		}
	}
	return false
}
