package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a real DNS server on loopback.
func upstream(t testing.TB) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		switch strings.ToLower(q.Question[0].Name) {
		case "public.test.":
			r.Answer = append(r.Answer, mustRR(t, "public.test. 60 IN A 93.184.216.34"))
		case "private.test.":
			r.Answer = append(r.Answer, mustRR(t, "private.test. 60 IN A 10.1.2.3"))
		case "mixed.test.":
			r.Answer = append(r.Answer, mustRR(t, "mixed.test. 60 IN A 93.184.216.34"), mustRR(t, "mixed.test. 60 IN A 127.0.0.1"))
		case "v6.test.":
			r.Answer = append(r.Answer, mustRR(t, "v6.test. 60 IN AAAA ::ffff:169.254.169.254"))
		case "glue.test.":
			// An allowed answer with a refused address beside it.
			r.Answer = append(r.Answer, mustRR(t, "glue.test. 60 IN MX 10 mail.glue.test."))
			r.Extra = append(r.Extra, mustRR(t, "mail.glue.test. 60 IN A 10.1.2.3"))
		case "glue-ok.test.":
			r.Answer = append(r.Answer, mustRR(t, "glue-ok.test. 60 IN MX 10 mail.glue-ok.test."))
			r.Extra = append(r.Extra, mustRR(t, "mail.glue-ok.test. 60 IN A 93.184.216.34"))
		case "hint4.test.":
			r.Answer = append(r.Answer, mustRR(t, `hint4.test. 60 IN HTTPS 1 . alpn="h2" ipv4hint="93.184.216.34,127.0.0.1"`))
		case "hint6.test.":
			r.Answer = append(r.Answer, mustRR(t, `hint6.test. 60 IN HTTPS 1 . ipv6hint="::1"`))
		case "hint-ok.test.":
			r.Answer = append(r.Answer, mustRR(t, `hint-ok.test. 60 IN HTTPS 1 . ipv4hint="93.184.216.34" ipv6hint="2606:2800:220:1::1"`))
		case "svcb-extra.test.":
			r.Answer = append(r.Answer, mustRR(t, `svcb-extra.test. 60 IN HTTPS 1 svc.svcb-extra.test.`))
			r.Extra = append(r.Extra, mustRR(t, `svc.svcb-extra.test. 60 IN SVCB 1 . ipv4hint="169.254.169.254"`))
		case "txt.test.":
			r.Answer = append(r.Answer, mustRR(t, `txt.test. 60 IN TXT "hello"`))
		default:
			r.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(r)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func mustRR(t testing.TB, s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

func publicOnly(a netip.Addr) (bool, string) {
	if a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() {
		return false, "not-public"
	}
	return true, ""
}

func TestHandle(t *testing.T) {
	var refused []string
	s, err := New(Config{
		Upstreams: []string{upstream(t)},
		Timeout:   2 * time.Second,
		Allow:     publicOnly,
		OnRefused: func(r string) { refused = append(refused, r) },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		qtype   uint16
		rcode   int
		answers int
	}{
		{"public.test", dns.TypeA, dns.RcodeSuccess, 1},
		{"private.test", dns.TypeA, dns.RcodeRefused, 0},
		{"mixed.test", dns.TypeA, dns.RcodeRefused, 0},
		{"v6.test", dns.TypeAAAA, dns.RcodeRefused, 0},
		{"txt.test", dns.TypeTXT, dns.RcodeSuccess, 1},
		{"glue.test", dns.TypeMX, dns.RcodeRefused, 0},
		{"glue-ok.test", dns.TypeMX, dns.RcodeSuccess, 1},
		{"hint4.test", dns.TypeHTTPS, dns.RcodeRefused, 0},
		{"hint6.test", dns.TypeHTTPS, dns.RcodeRefused, 0},
		{"hint-ok.test", dns.TypeHTTPS, dns.RcodeSuccess, 1},
		{"svcb-extra.test", dns.TypeHTTPS, dns.RcodeRefused, 0},
		{"nosuch.test", dns.TypeA, dns.RcodeNameError, 0},
	}
	for _, tt := range tests {
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(tt.name), tt.qtype)
		q.Id = 4242
		req, _ := q.Pack()
		out, err := s.Handle(context.Background(), req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if r.Id != 4242 || r.Rcode != tt.rcode || len(r.Answer) != tt.answers {
			t.Errorf("%s: id %d rcode %s answers %d; want id 4242 rcode %s answers %d",
				tt.name, r.Id, dns.RcodeToString[r.Rcode], len(r.Answer), dns.RcodeToString[tt.rcode], tt.answers)
		}
	}
	if len(refused) != 7 {
		t.Errorf("OnRefused called %d times, want 7", len(refused))
	}
}

func TestUpstreamDown(t *testing.T) {
	// A loopback port with nothing listening: the query fails fast.
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	dead := pc.LocalAddr().String()
	pc.Close()
	s, err := New(Config{Upstreams: []string{dead}, Timeout: 500 * time.Millisecond}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	q := new(dns.Msg)
	q.SetQuestion("x.test.", dns.TypeA)
	req, _ := q.Pack()
	out, err := s.Handle(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %v (%v), want SERVFAIL", dns.RcodeToString[r.Rcode], err)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	p := t.TempDir() + "/resolv.conf"
	if err := writeFile(p, "nameserver 127.0.0.53\nnameserver ::1\noptions edns0\n"); err != nil {
		t.Fatal(err)
	}
	got, err := UpstreamsFromResolvConf(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "127.0.0.53:53,[::1]:53" {
		t.Errorf("UpstreamsFromResolvConf = %v", got)
	}
}

func FuzzHandle(f *testing.F) {
	s, err := New(Config{Upstreams: []string{upstream(f)}, Timeout: time.Second, Allow: publicOnly}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range []string{"public.test.", "private.test.", "nosuch.test."} {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		b, _ := q.Pack()
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, req []byte) {
		out, err := s.Handle(context.Background(), req)
		if err != nil {
			return
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
	})
}
