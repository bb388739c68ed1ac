package tunnel

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	conns     *prometheus.CounterVec // by mode and result
	active    *prometheus.GaugeVec   // by mode
	bytes     *prometheus.CounterVec // by direction
	portsUsed prometheus.Gauge
	setup     *prometheus.HistogramVec // accept to spliced, by mode

	preauth       prometheus.Gauge       // connections not authenticated yet
	preauthClosed *prometheus.CounterVec // by reason: deadline, evicted
	auth          prometheus.Histogram   // accept to authentication seen
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "connections_total",
			Help: "Inbound tunnel connections by mode (port, sni) and result.",
		}, []string{"mode", "result"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "active_connections",
			Help: "Inbound tunnel connections being spliced now.",
		}, []string{"mode"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "bytes_total",
			Help: "Bytes spliced: in = client to VM, out = VM to client.",
		}, []string{"direction"}),
		portsUsed: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "ports_in_use",
			Help: "Port-mode listeners open now.",
		}),
		setup: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "setup_seconds",
			Help:    "Time from accept until the connection into the VM is spliced.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 3, 10),
		}, []string{"mode"}),
		preauth: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "preauth_connections",
			Help: "Tunnel connections routed to a session that have not authenticated yet.",
		}),
		preauthClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "preauth_closed_total",
			Help: "Connections the tunnel closed before authentication: deadline (--tunnel-auth-timeout), evicted (to make room in a full session).",
		}, []string{"reason"}),
		auth: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "pgwasm", Subsystem: "tunnel", Name: "auth_seconds",
			Help:    "Time from accept until the tunnel saw the client authenticated.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.conns, m.active, m.bytes, m.portsUsed, m.setup, m.preauth, m.preauthClosed, m.auth} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("cannot register tunnel metrics: %w", err)
		}
	}
	return m, nil
}
