package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"
)

const itemsSumSQL = `select count(*) || ' ' || coalesce(md5(string_agg(id || ':' || v || ':' || n, ',' order by id)), '') from items`

// TestReplicationIntoVM is scenario 2: the host's PostgreSQL 15 publishes a
// table; the VM subscribes through the relay (host alias 10.0.2.3, egress
// allowed for that one port); the initial copy, inserts, updates and deletes
// on the host arrive in the VM.
func TestReplicationIntoVM(t *testing.T) {
	ctx := testCtx(t, 8*time.Minute)
	host := startHostPG(ctx, t)
	srv := startServer(t, host.Port)
	se := srv.createSession(t)
	g := startVM(ctx, t, se.RelayURL, "")

	hc := host.conn("postgres")
	mustPsql(ctx, t, hc,
		"-c", `create table items (id int primary key, v text not null, n numeric not null)`,
		"-c", `insert into items select g, md5(g::text), g * 1.5 from generate_series(1, 2000) g`,
		"-c", `create publication pub_items for table items`)

	g.exec(ctx, t, `create table items (id int primary key, v text not null, n numeric not null)`)
	t0 := time.Now()
	g.exec(ctx, t, fmt.Sprintf(`create subscription sub_items connection 'host=%s port=%d user=postgres password=%s dbname=postgres sslmode=require connect_timeout=20' publication pub_items`,
		HostAlias, host.Port, host.Password))
	t.Cleanup(func() {
		// Drop the slot on the host too, while the network is still up.
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := g.Exec(cctx, `drop subscription sub_items`); err != nil {
			t.Logf("drop subscription: %v", err)
		}
	})

	waitSame := func(what string) {
		t.Helper()
		t1 := time.Now()
		var hostSum, vmSum string
		err := poll(ctx, 3*time.Minute, func() error {
			hostSum = mustPsql(ctx, t, hc, "-c", itemsSumSQL)
			vmSum = g.value(ctx, t, itemsSumSQL)
			if hostSum != vmSum {
				return fmt.Errorf("%w: host %s, VM %s", errNotYet, hostSum, vmSum)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s did not reach the VM: %v\nhost log:\n%s", what, err, tail(host.Log(), 20))
		}
		t.Logf("%s: VM matches the host (%s) after %s", what, vmSum, time.Since(t1).Round(time.Millisecond))
	}
	waitSame("initial copy")
	if got := g.value(ctx, t, `select count(*) from items`); got != "2000" {
		t.Fatalf("VM rows after initial copy = %s, want 2000", got)
	}
	t.Logf("subscription created and synced in %s", time.Since(t0).Round(time.Millisecond))

	mustPsql(ctx, t, hc,
		"-c", `insert into items select g, md5(g::text), g * 1.5 from generate_series(2001, 2500) g`,
		"-c", `update items set v = 'updated', n = n + 1 where id % 10 = 0`,
		"-c", `delete from items where id between 100 and 199`)
	waitSame("insert/update/delete")
	for _, c := range []struct{ sql, want string }{
		{`select count(*) from items`, "2400"},
		{`select count(*) from items where v = 'updated'`, "240"},
		{`select count(*) from items where id between 100 and 199`, "0"},
	} {
		if got := g.value(ctx, t, c.sql); got != c.want {
			t.Errorf("VM %s = %s, want %s", c.sql, got, c.want)
		}
	}
}

// TestReplicationOutOfVM is scenario 3: the VM publishes a table; the host's
// PostgreSQL subscribes through the port-mode tunnel with the VM's password
// (SCRAM, as the VM's pg_hba.conf requires for replication); rows written in
// the VM arrive on the host.
func TestReplicationOutOfVM(t *testing.T) {
	ctx := testCtx(t, 8*time.Minute)
	host := startHostPG(ctx, t)
	srv := startServer(t)
	se := srv.createSession(t)
	g := startVM(ctx, t, se.RelayURL, "")

	g.exec(ctx, t, `create table items (id int primary key, v text not null, n numeric not null);
		insert into items select g, md5(g::text), g * 1.5 from generate_series(1, 1500) g;
		create publication pub_out for table items`)
	hc := host.conn("postgres")
	mustPsql(ctx, t, hc, "-c", `create table items (id int primary key, v text not null, n numeric not null)`)
	t0 := time.Now()
	mustPsql(ctx, t, hc, "-c", fmt.Sprintf(`create subscription sub_out connection '%s' publication pub_out`, g.portConn(se, "")))
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := psql(cctx, hc, "-c", `drop subscription sub_out`); err != nil {
			t.Logf("drop subscription: %v", err)
		}
	})
	waitSame := func(what string) {
		t.Helper()
		t1 := time.Now()
		var hostSum, vmSum string
		err := poll(ctx, 3*time.Minute, func() error {
			vmSum = g.value(ctx, t, itemsSumSQL)
			hostSum = mustPsql(ctx, t, hc, "-c", itemsSumSQL)
			if hostSum != vmSum {
				return fmt.Errorf("%w: VM %s, host %s", errNotYet, vmSum, hostSum)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s did not reach the host: %v\nhost log:\n%s", what, err, tail(host.Log(), 20))
		}
		t.Logf("%s: host matches the VM (%s) after %s", what, hostSum, time.Since(t1).Round(time.Millisecond))
	}
	waitSame("initial copy")
	t.Logf("subscription created and synced in %s", time.Since(t0).Round(time.Millisecond))

	g.exec(ctx, t, `insert into items select g, md5(g::text), g * 1.5 from generate_series(1501, 1800) g;
		update items set v = 'vm-updated' where id % 7 = 0;
		delete from items where id <= 50`)
	waitSame("insert/update/delete")
	for _, c := range []struct{ sql, want string }{
		{`select count(*) from items`, "1750"},
		{`select count(*) from items where v = 'vm-updated'`, "250"},
	} {
		if got := mustPsql(ctx, t, hc, "-c", c.sql); got != c.want {
			t.Errorf("host %s = %s, want %s", c.sql, got, c.want)
		}
	}
	// The walsender in the VM serves the host through the tunnel.
	if got := g.value(ctx, t, `select count(*) from pg_stat_replication where state = 'streaming'`); got != "1" {
		t.Errorf("VM pg_stat_replication streaming = %s, want 1", got)
	}
}
