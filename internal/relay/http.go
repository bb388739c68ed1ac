package relay

import (
	"net/http"
	"strings"

	"github.com/coder/websocket"
)

// ServeHTTP attaches a websocket to a session. Mount it at /relay/; the URL
// is /relay/{id}?token={token}. Unknown session: 404; wrong token: 401;
// Origin not allowed: 403 (from the websocket library).
func (m *Manager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Path
	if i := strings.LastIndex(id, "/"); i >= 0 {
		id = id[i+1:]
	}
	if !validID(id) {
		http.Error(w, "relay: no session id in the URL (want /relay/{id}?token={token})", http.StatusNotFound)
		return
	}
	s, ok := m.Lookup(id)
	if !ok {
		http.Error(w, "relay: unknown or ended session", http.StatusNotFound)
		return
	}
	if !s.checkToken(r.URL.Query().Get("token")) {
		s.log.Info("websocket refused: bad token", "remote", r.RemoteAddr)
		http.Error(w, "relay: missing or wrong session token", http.StatusUnauthorized)
		return
	}
	opts := &websocket.AcceptOptions{
		// Frames are small and often already compressed (TLS); deflate
		// would cost tens of KB per connection.
		CompressionMode: websocket.CompressionDisabled,
	}
	if len(m.cfg.AllowedOrigins) == 1 && m.cfg.AllowedOrigins[0] == "*" {
		opts.InsecureSkipVerify = true
	} else {
		opts.OriginPatterns = m.cfg.AllowedOrigins
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		s.log.Info("websocket refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	s.attach(r.Context(), c)
}

// validID accepts what newID makes: lowercase letters and digits.
func validID(id string) bool {
	if len(id) < 16 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
