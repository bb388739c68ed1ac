// Package server is pgwasm's HTTP front: the session API, the relay
// endpoint, the VM image files, the web app, health and metrics.
//
// Routes:
//
//	POST   /api/sessions        create a network session (JSON)
//	GET    /api/sessions/{id}   session info; Authorization: Bearer <token>
//	DELETE /api/sessions/{id}   end the session; same auth
//	/relay/                     the relay's websocket endpoint
//	/image/                     VM image files (kernel, 9p tree, snapshots)
//	/healthz, /livez            liveness: "ok" while the process serves
//	/readyz                     readiness: 503 once draining (SetDraining)
//	/metrics                    Prometheus metrics
//	/                           the web app
//
// Every route but /healthz answers only for the hosts it serves (421
// otherwise, against DNS rebinding), and every response carries security
// headers; see security.go.
package server

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgwasm/pgwasm/internal/tunnel"
)

// Session is what the API needs from a relay session.
type Session interface {
	tunnel.Session
	Token() string
	// ExpiresAt is when the relay ends the session; zero if it has no limit.
	ExpiresAt() time.Time
}

// Sessions is the relay's session registry as the API sees it.
type Sessions interface {
	Create(ctx context.Context, client netip.Addr) (Session, error)
	Lookup(id string) (Session, bool)
	Delete(id string) error
}

// ErrLimit marks Create errors that mean "too many sessions, try later";
// the API answers them with 429 instead of 500.
var ErrLimit = errors.New("session limit reached")

// ErrDraining marks Create errors of a server shutting down; the API
// answers them with 503 and Retry-After.
var ErrDraining = errors.New("server is draining")

// PasswordPlaceholder stands for the database password in the connection
// strings the API returns: the page sets the password through the guest
// agent and fills it in; the server never knows it.
const PasswordPlaceholder = "PASSWORD"

// Config holds the server settings.
type Config struct {
	// PublicURL is the base URL users reach the server under (behind a proxy
	// or load balancer). Nil: taken from each request.
	PublicURL *url.URL
	// AllowedOrigins lists other page origins (scheme://host[:port]) allowed
	// to call the API; "*" allows any. The server's own origin always is.
	AllowedOrigins []string
	// TrustForwardedFor takes the client address from the last
	// X-Forwarded-For entry (set it only behind a proxy that writes it).
	TrustForwardedFor bool
	// ImageDir holds the VM image files served under /image/.
	ImageDir string
	// App serves the web app at "/". Nil: a placeholder page.
	App http.Handler
	// Relay serves the websocket endpoint under /relay/.
	Relay http.Handler
	// Gatherer feeds /metrics. Nil: no /metrics.
	Gatherer prometheus.Gatherer
	// Tunnel gives sessions inbound PostgreSQL access. Nil: none.
	Tunnel *tunnel.Tunnel
	// TunnelHost is the host name or address users connect to for the
	// tunnel. Empty: the host of PublicURL or of the request.
	TunnelHost string
	// SNIPort is the public port of the tunnel's SNI listener; 0: SNI off.
	SNIPort uint16
	// AllowedHosts are Host header names served besides the defaults
	// (IP addresses, localhost, *.localhost, the host of PublicURL):
	// names, "*.domain", or "*" for any. Other hosts get 421 (DNS
	// rebinding; see security.go).
	AllowedHosts []string
}

// Server is an http.Handler.
type Server struct {
	cfg      Config
	sessions Sessions
	log      *slog.Logger
	mux      *http.ServeMux
	requests *prometheus.CounterVec
	refused  *prometheus.CounterVec
	hosts    *hostAllowList
	page     pagePolicy

	draining   atomic.Bool
	drainGauge prometheus.Gauge
}

//go:embed placeholder
var placeholder embed.FS

// New makes a server. reg receives its HTTP metrics (may be nil).
func New(cfg Config, sessions Sessions, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if sessions == nil {
		return nil, errors.New("server needs a session registry")
	}
	for _, o := range cfg.AllowedOrigins {
		if o != "*" {
			if u, err := url.Parse(o); err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return nil, fmt.Errorf("bad allowed origin %q: want scheme://host[:port]", o)
			}
		}
	}
	hosts, err := newHostAllowList(cfg.AllowedHosts, cfg.PublicURL)
	if err != nil {
		return nil, err
	}
	s := &Server{
		hosts:    hosts,
		cfg:      cfg,
		sessions: sessions,
		log:      logger,
		mux:      http.NewServeMux(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pgwasm", Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		drainGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pgwasm", Name: "draining",
			Help: "1 once a graceful shutdown has begun (readiness fails, no new sessions).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pgwasm", Subsystem: "http", Name: "refused_total",
			Help: "HTTP requests refused by reason: host (Host header not served, 421), origin (foreign Origin on the API, 403).",
		}, []string{"reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.requests, s.refused, s.drainGauge} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("cannot register HTTP metrics: %w", err)
			}
		}
	}
	app := cfg.App
	if app == nil {
		sub, err := fs.Sub(placeholder, "placeholder")
		if err != nil {
			return nil, fmt.Errorf("cannot open placeholder page: %w", err)
		}
		app = http.FileServerFS(sub)
	}
	s.page = newPagePolicy(app)
	s.handle("POST /api/sessions", "api", http.HandlerFunc(s.createSession))
	s.handle("GET /api/sessions/{id}", "api", http.HandlerFunc(s.getSession))
	s.handle("DELETE /api/sessions/{id}", "api", http.HandlerFunc(s.deleteSession))
	s.handle("OPTIONS /api/", "api", http.HandlerFunc(s.preflight))
	s.handle("/api/", "api", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API endpoint")
	}))
	if cfg.Relay != nil {
		s.handle("/relay/", "relay", cfg.Relay)
	}
	s.handle("GET /image/", "image", http.StripPrefix("/image/", &imageHandler{dir: cfg.ImageDir}))
	// Health checks come from load balancers and probes under any name;
	// the answer is "ok" (or "draining") and nothing else. Liveness
	// stays ok through a drain: the process is healthy, only leaving.
	alive := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintln(w, "ok")
	})
	s.mux.Handle("GET /healthz", s.logged("healthz", alive))
	s.mux.Handle("GET /livez", s.logged("livez", alive))
	s.mux.Handle("GET /readyz", s.logged("readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if s.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "draining")
			return
		}
		fmt.Fprintln(w, "ok")
	})))
	if cfg.Gatherer != nil {
		s.handle("GET /metrics", "metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	s.handle("/", "app", s.pageHeaders(app))
	return s, nil
}

// SetDraining starts a graceful shutdown on the HTTP side: /readyz answers
// 503, so probes and load balancers take this server out, and session
// creation answers 503 (the page retries, and lands on another server).
func (s *Server) SetDraining() {
	if !s.draining.Swap(true) {
		s.drainGauge.Set(1)
		s.log.Info("draining: readiness fails from now on")
	}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w.Header())
	s.mux.ServeHTTP(w, r)
}

// handle serves pattern for the hosts the server answers to.
func (s *Server) handle(pattern, route string, h http.Handler) {
	s.mux.Handle(pattern, s.logged(route, s.hostChecked(route, h)))
}

// clientAddr is the address the session is created for.
func (s *Server) clientAddr(r *http.Request) netip.Addr {
	return ClientAddr(r, s.cfg.TrustForwardedFor)
}

// ClientAddr is the address of the client behind r: the last
// X-Forwarded-For hop if trustForwardedFor, else the peer address.
func ClientAddr(r *http.Request, trustForwardedFor bool) netip.Addr {
	if trustForwardedFor {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			parts := strings.Split(xff[len(xff)-1], ",")
			if a, err := netip.ParseAddr(strings.TrimSpace(parts[len(parts)-1])); err == nil {
				return a.Unmap()
			}
		}
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		a, _ := netip.ParseAddr(host)
		return a.Unmap()
	}
	return ap.Addr().Unmap()
}
