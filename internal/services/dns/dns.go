// Package dns is the VM's resolver at the gateway address. It forwards
// queries to the host's resolvers and refuses answers that point at
// addresses the egress policy would refuse anyway: A and AAAA records and
// SVCB/HTTPS address hints, in the Answer, Authority and Additional
// sections alike.
//
// A refused answer is REFUSED for the whole query, not silently stripped:
// a name that mixes public and private addresses is a DNS-rebinding signal,
// and an explicit REFUSED makes psql in the VM say "could not translate host
// name" at once instead of trying the wrong address or timing out. The NAT
// checks the policy again on every connection, so this is defence in depth
// and a clearer error, not the only gate.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// Config configures a Server.
type Config struct {
	// Upstreams are "host:port" resolvers, tried in order.
	Upstreams []string
	// Timeout bounds one upstream exchange. Default 5 s.
	Timeout time.Duration
	// Allow judges each address in an upstream response (A and AAAA
	// records and SVCB/HTTPS address hints, in any section); nil allows
	// everything. It returns the refusal reason when not allowed.
	Allow func(netip.Addr) (ok bool, reason string)
	// OnRefused, if set, is told each time an answer is refused.
	OnRefused func(reason string)
	// MaxInFlight bounds concurrent upstream queries. Default 16.
	MaxInFlight int
}

// exchanger is the upstream side; tests may replace it.
type exchanger interface {
	ExchangeContext(ctx context.Context, m *dns.Msg, addr string) (*dns.Msg, time.Duration, error)
}

// Server answers DNS queries.
type Server struct {
	cfg Config
	log *slog.Logger
	udp exchanger
	tcp exchanger
	sem chan struct{}
}

// New makes a server.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("cannot configure DNS: no upstream resolvers")
	}
	for _, u := range cfg.Upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return nil, fmt.Errorf("cannot configure DNS upstream %q: %w", u, err)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 16
	}
	return &Server{
		cfg: cfg,
		log: log,
		udp: &dns.Client{Net: "udp", Timeout: cfg.Timeout},
		tcp: &dns.Client{Net: "tcp", Timeout: cfg.Timeout},
		sem: make(chan struct{}, cfg.MaxInFlight),
	}, nil
}

// UpstreamsFromResolvConf reads the name servers of a resolv.conf file.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read resolvers from %s: %w", path, err)
	}
	var ups []string
	for _, s := range cc.Servers {
		ups = append(ups, net.JoinHostPort(s, cc.Port))
	}
	if len(ups) == 0 {
		return nil, fmt.Errorf("cannot read resolvers from %s: no nameserver lines", path)
	}
	return ups, nil
}

// Handle answers one query in wire format. An error means the input was not
// a DNS message worth answering.
func (s *Server) Handle(ctx context.Context, req []byte) ([]byte, error) {
	q := new(dns.Msg)
	if err := q.Unpack(req); err != nil {
		return nil, fmt.Errorf("cannot parse DNS query: %w", err)
	}
	if q.Response {
		return nil, errors.New("cannot answer a DNS response")
	}
	resp := s.answer(ctx, q)
	size := dns.MinMsgSize
	if o := q.IsEdns0(); o != nil && int(o.UDPSize()) > size {
		size = int(o.UDPSize())
	}
	resp.Truncate(size)
	out, err := resp.Pack()
	if err != nil {
		return nil, fmt.Errorf("cannot pack DNS answer: %w", err)
	}
	return out, nil
}

func (s *Server) answer(ctx context.Context, q *dns.Msg) *dns.Msg {
	fail := func(rcode int) *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(q, rcode)
		m.RecursionAvailable = true
		return m
	}
	if q.Opcode != dns.OpcodeQuery {
		return fail(dns.RcodeNotImplemented)
	}
	if len(q.Question) != 1 {
		return fail(dns.RcodeFormatError)
	}
	up, err := s.exchange(ctx, q)
	if err != nil {
		s.log.Debug("dns upstream failed", "name", q.Question[0].Name, "err", err)
		return fail(dns.RcodeServerFailure)
	}
	if s.cfg.Allow != nil {
		for _, a := range addresses(up) {
			if allowed, reason := s.cfg.Allow(a); !allowed {
				s.log.Debug("dns answer refused", "name", q.Question[0].Name, "addr", a, "reason", reason)
				if s.cfg.OnRefused != nil {
					s.cfg.OnRefused(reason)
				}
				return fail(dns.RcodeRefused)
			}
		}
	}
	up.Id = q.Id
	return up
}

// addresses lists every address a response hands the guest: A and AAAA
// records and the ipv4hint/ipv6hint of SVCB and HTTPS records (RFC 9460),
// in every section. Stub resolvers and caches in the guest may use the
// Additional section (glue, the target's addresses next to an HTTPS
// answer) and connect to hints without another query, so each of them is
// judged as an answer would be; only looking at the Answer section let a
// refused address through beside an allowed one.
func addresses(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	add := func(ips ...net.IP) {
		for _, ip := range ips {
			if a, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	svcb := func(kvs []dns.SVCBKeyValue) {
		for _, kv := range kvs {
			switch kv := kv.(type) {
			case *dns.SVCBIPv4Hint:
				add(kv.Hint...)
			case *dns.SVCBIPv6Hint:
				add(kv.Hint...)
			}
		}
	}
	for _, section := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range section {
			switch rr := rr.(type) {
			case *dns.A:
				add(rr.A)
			case *dns.AAAA:
				add(rr.AAAA)
			case *dns.SVCB:
				svcb(rr.Value)
			case *dns.HTTPS:
				svcb(rr.Value)
			}
		}
	}
	return out
}

func (s *Server) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// A fresh ID per upstream query so a guest cannot steer it.
	out := q.Copy()
	out.Id = dns.Id()
	var errs []error
	for _, u := range s.cfg.Upstreams {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		r, _, err := s.udp.ExchangeContext(ctx, out, u)
		if err == nil && r.Truncated {
			r, _, err = s.tcp.ExchangeContext(ctx, out, u)
		}
		cancel()
		if err == nil {
			return r, nil
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", u, err))
	}
	return nil, fmt.Errorf("cannot resolve: %w", errors.Join(errs...))
}

// Serve answers queries arriving on conn until ctx ends or conn fails.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cannot read DNS query: %w", err)
		}
		req := append([]byte(nil), buf[:n]...)
		go func() {
			resp, err := s.Handle(ctx, req)
			if err != nil {
				s.log.Debug("dns query not answered", "from", from, "err", err)
				return
			}
			if _, err := conn.WriteTo(resp, from); err != nil {
				s.log.Debug("cannot send dns answer", "err", err)
			}
		}()
	}
}
