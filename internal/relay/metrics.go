package relay

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons for frames (metric label values).
const (
	dropRunt       = "runt"
	dropOversize   = "oversize"
	dropText       = "text-message"
	dropBadMAC     = "bad-source-mac"
	dropSpoofMAC   = "spoofed-mac"
	dropSpoofIP    = "spoofed-ip"
	dropSpoofARP   = "spoofed-arp"
	dropMalformed  = "malformed"
	dropEthertype  = "unsupported-ethertype"
	dropNotRunning = "session-ended"
)

type metrics struct {
	sessions      prometheus.Gauge
	sessionsTotal prometheus.Counter
	// sessionsRestored counts sessions re-created from their token (a
	// subset of sessionsTotal).
	sessionsRestored prometheus.Counter
	sessionsEnded    *prometheus.CounterVec
	websockets       prometheus.Gauge
	bytes            *prometheus.CounterVec
	frames           *prometheus.CounterVec
	dropped          *prometheus.CounterVec
	flows            *prometheus.GaugeVec
	flowsTotal       *prometheus.CounterVec
	refusals         *prometheus.CounterVec
	sessionRefused   *prometheus.CounterVec
	// websocketsDrained counts websockets closed with StatusDraining.
	websocketsDrained prometheus.Counter

	// The per-frame counters, resolved once: WithLabelValues hashes and
	// locks on every call, which showed in the per-frame profile.
	framesIn, framesOut, bytesIn, bytesOut prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgwasm_relay_sessions", Help: "Relay sessions alive now."}),
		sessionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgwasm_relay_sessions_created_total", Help: "Relay sessions created."}),
		sessionsRestored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgwasm_relay_sessions_restored_total", Help: "Relay sessions re-created from their token on a websocket reconnect (after a restart, or made by another server)."}),
		sessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgwasm_relay_sessions_ended_total", Help: "Relay sessions ended, by reason."}, []string{"reason"}),
		websockets: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgwasm_relay_websockets", Help: "Websockets attached to sessions now."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgwasm_relay_bytes_total", Help: "Ethernet frame bytes relayed; in = from VMs."}, []string{"direction"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgwasm_relay_frames_total", Help: "Ethernet frames relayed; in = from VMs."}, []string{"direction"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgwasm_relay_frames_dropped_total", Help: "Frames from VMs dropped, by reason."}, []string{"reason"}),
		flows: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgwasm_relay_flows", Help: "Open NAT flows now."}, []string{"proto"}),
		flowsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgwasm_relay_flows_total", Help: "NAT flows opened."}, []string{"proto"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgwasm_relay_refusals_total", Help: "Flows and DNS answers refused, by protocol and reason."}, []string{"proto", "reason"}),
		websocketsDrained: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgwasm_relay_websockets_drained_total", Help: "Websockets closed with code 4503 (draining) on graceful shutdown."}),
		sessionRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgwasm_relay_sessions_refused_total", Help: "Session creations refused, by reason."}, []string{"reason"}),
	}
	m.framesIn, m.framesOut = m.frames.WithLabelValues("in"), m.frames.WithLabelValues("out")
	m.bytesIn, m.bytesOut = m.bytes.WithLabelValues("in"), m.bytes.WithLabelValues("out")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.sessions, m.sessionsTotal, m.sessionsRestored, m.sessionsEnded, m.websockets, m.bytes, m.frames, m.dropped, m.flows, m.flowsTotal, m.refusals, m.sessionRefused, m.websocketsDrained} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("cannot register relay metrics: %w", err)
		}
	}
	return m, nil
}
