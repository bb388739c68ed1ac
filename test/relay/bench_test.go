package relay_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// BenchmarkConnect measures a full pgx connection (TCP, TLS, SCRAM, first
// query) to the host PostgreSQL: directly, and through the relay and
// tunnel in each mode. The difference is what the tunnel and the relay's
// netstack add to connection setup.
func BenchmarkConnect(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pg := pgtest.Start(b)
	s := newStack(b)
	info := s.vmWithPostgres(b, ctx, pgtest.Direct17(b, pg.Addr))
	modes := []struct {
		name, addr, sni, negotiation string
	}{
		{"direct-no-tunnel", pg.Addr, "", "postgres"},
		{"port", fmt.Sprintf("127.0.0.1:%d", info.Tunnel.Port.Port), "", "postgres"},
		{"sni-classic", s.sniAddr, info.Tunnel.SNI.Host, "postgres"},
		{"sni-direct", s.sniAddr, info.Tunnel.SNI.Host, "direct"},
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			host, port, _ := net.SplitHostPort(m.addr)
			cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres:%s@%s:%s/postgres?sslmode=require&sslnegotiation=%s", pg.Password, host, port, m.negotiation))
			if err != nil {
				b.Fatal(err)
			}
			if m.sni != "" {
				cfg.TLSConfig.ServerName = m.sni
			}
			for b.Loop() {
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					b.Fatal(err)
				}
				var n int
				if err := conn.QueryRow(ctx, "select 1").Scan(&n); err != nil {
					b.Fatal(err)
				}
				conn.Close(ctx)
			}
		})
	}
}
