package e2e

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const checksumSQL = `select count(*) || ' ' || coalesce(md5(string_agg(id || ':' || via || ':' || v, ',' order by id)), '') from t1`

// expected is the checksum row of t1 for the given (id, via) rows, with v = md5(id::text).
func expected(rows map[int]string) string {
	ids := make([]int, 0, len(rows))
	for id := range rows {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		sum := md5.Sum([]byte(strconv.Itoa(id)))
		parts[i] = fmt.Sprintf("%d:%s:%s", id, rows[id], hex.EncodeToString(sum[:]))
	}
	return fmt.Sprintf("%d %s", len(ids), md5Rows(parts))
}

// TestPsqlThroughTunnel is scenario 1: host psql writes through the port
// tunnel and the SNI/TLS tunnel, four psql sessions at once; the VM sees
// exactly the rows written.
func TestPsqlThroughTunnel(t *testing.T) {
	ctx := testCtx(t, 8*time.Minute)
	srv := startServer(t)
	se := srv.createSession(t)
	g := startVM(ctx, t, se.RelayURL, "")
	want := map[int]string{}

	t0 := time.Now()
	mustPsql(ctx, t, g.portConn(se, ""), "-c", `create table t1 (id int primary key, via text not null, v text not null)`,
		"-c", `insert into t1 select g, 'port', md5(g::text) from generate_series(1, 100) g`)
	for i := 1; i <= 100; i++ {
		want[i] = "port"
	}
	t.Logf("port tunnel: create + 100 rows in %s", time.Since(t0).Round(time.Millisecond))

	// SNI mode: TLS is required and the session is chosen by the name.
	t0 = time.Now()
	out := mustPsql(ctx, t, g.sniConn(se, ""), "-c", `insert into t1 select g, 'sni', md5(g::text) from generate_series(101, 200) g`,
		"-c", `select ssl from pg_stat_ssl where pid = pg_backend_pid()`)
	if out != "t" {
		t.Errorf("SNI connection: pg_stat_ssl.ssl = %q, want t", out)
	}
	for i := 101; i <= 200; i++ {
		want[i] = "sni"
	}
	t.Logf("SNI tunnel: 100 rows in %s", time.Since(t0).Round(time.Millisecond))

	// A client without TLS is refused by the SNI tunnel with a clear error.
	if _, err := psql(ctx, strings.Replace(g.sniConn(se, ""), "sslmode=require", "sslmode=disable", 1), "-c", "select 1"); err == nil ||
		!strings.Contains(err.Error(), "TLS") && !strings.Contains(err.Error(), "SSL") {
		t.Errorf("SNI tunnel without TLS: err = %v, want a refusal that mentions TLS/SSL", err)
	}
	// A wrong password is refused by PostgreSQL in the VM.
	if _, err := psql(ctx, strings.Replace(g.portConn(se, ""), g.password, "wrong", 1), "-c", "select 1"); err == nil ||
		!strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("wrong password: err = %v, want password authentication failed", err)
	}

	// Four sessions at once, half through each tunnel mode. Each one
	// writes, then waits, then counts the e2e sessions open at that moment.
	t0 = time.Now()
	var wg sync.WaitGroup
	seen := make([]string, 4)
	errs := make([]error, 4)
	for k := range 4 {
		conn := g.portConn(se, "")
		via := "conc-port"
		if k%2 == 1 {
			conn, via = g.sniConn(se, ""), "conc-sni"
		}
		lo := 1000 + k*100 + 1
		for i := lo; i < lo+50; i++ {
			want[i] = via
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			seen[k], errs[k] = psql(ctx, conn,
				"-c", fmt.Sprintf(`insert into t1 select g, '%s', md5(g::text) from generate_series(%d, %d) g`, via, lo, lo+49),
				"-c", `select pg_sleep(4)`,
				"-c", `select count(*) from pg_stat_activity where application_name = 'e2e'`)
		}()
	}
	wg.Wait()
	maxSeen := 0
	for k := range 4 {
		if errs[k] != nil {
			t.Fatalf("concurrent session %d: %v", k, errs[k])
		}
		lines := strings.Split(seen[k], "\n")
		n, _ := strconv.Atoi(lines[len(lines)-1])
		maxSeen = max(maxSeen, n)
	}
	t.Logf("4 concurrent sessions in %s; at most %d open at once", time.Since(t0).Round(time.Millisecond), maxSeen)
	if maxSeen < 2 {
		t.Errorf("concurrent sessions: at most %d e2e connections were open at once, want >= 2", maxSeen)
	}

	// Inside the VM (the guest agent's own connection, over the Unix socket).
	wantSum := expected(want)
	if got := g.value(ctx, t, checksumSQL); got != wantSum {
		t.Errorf("VM checksum of t1 = %q, want %q", got, wantSum)
	}
	// And back through the tunnel.
	if got := mustPsql(ctx, t, g.portConn(se, ""), "-c", checksumSQL); got != wantSum {
		t.Errorf("checksum through the tunnel = %q, want %q", got, wantSum)
	}
}
