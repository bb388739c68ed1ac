package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// shopSQL makes the host database: three tables (105,000 rows), indexes, a
// view and a function.
const shopSQL = `
create table customers (id int primary key, name text not null, email text unique, created date not null);
insert into customers select g, 'customer ' || g, 'c' || g || '@example.com', date '2020-01-01' + (g % 1000) from generate_series(1, 20000) g;
create table products (id int primary key, title text not null, price numeric(10,2) not null, tags text[]);
insert into products select g, 'product ' || md5(g::text), (g % 500) + 0.99, array['t' || (g % 7), 't' || (g % 11)] from generate_series(1, 5000) g;
create table orders (id bigint primary key, customer_id int not null references customers, product_id int not null references products,
	qty int not null, ordered date not null);
insert into orders select g, 1 + (g * 7) % 20000, 1 + (g * 13) % 5000, 1 + g % 5, date '2021-01-01' + (g % 700) from generate_series(1, 80000) g;
create index orders_customer on orders (customer_id);
create index orders_ordered on orders (ordered);
create index products_title_lower on products (lower(title));
create view customer_totals as
	select o.customer_id, count(*) as n, sum(o.qty * p.price) as total
	from orders o join products p on p.id = o.product_id group by o.customer_id;
create function order_total(cid int) returns numeric language sql stable as
	$$ select coalesce(sum(o.qty * p.price), 0) from orders o join products p on p.id = o.product_id where o.customer_id = cid $$;
`

// shopSumSQL is one line describing the whole database: rows and md5 of
// every table, the view's result, the function's answer, the indexes.
const shopSumSQL = `select string_agg(x, ' ' order by x) from (
	select 'customers=' || count(*) || ':' || md5(string_agg(c::text, ',' order by id)) x from customers c
	union all select 'products=' || count(*) || ':' || md5(string_agg(p::text, ',' order by id)) from products p
	union all select 'orders=' || count(*) || ':' || md5(string_agg(o::text, ',' order by id)) from orders o
	union all select 'view=' || count(*) || ':' || md5(string_agg(v::text, ',' order by customer_id)) from customer_totals v
	union all select 'fn=' || order_total(7)
	union all select 'indexes=' || string_agg(indexname, ',' order by indexname) from pg_indexes where schemaname = 'public'
) s`

// fileServer serves dir on loopback for the VM to fetch (GET /name) and
// stores what is posted (POST /name).
func fileServer(t *testing.T, dir string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{name}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join(dir, filepath.Base(r.PathValue("name"))))
	})
	mux.HandleFunc("POST /{name}", func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Create(filepath.Join(dir, filepath.Base(r.PathValue("name"))))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		n, err := io.Copy(f, r.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "stored %d\n", n)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func run(ctx context.Context, t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out.String(), 20))
	}
	return out.String()
}

// TestDumps is scenario 4: a generated host database (105,000 rows, indexes,
// a view, a function) travels into the VM three ways (a host pg_dump plain
// file restored by psql in the VM; a host custom-format file restored by
// pg_restore in the VM; pg_dump run inside the VM against the host over the
// network) and back out (pg_dump in the VM, read out through the agent,
// restored by the host's psql 15). The database's checksum line matches at every step.
func TestDumps(t *testing.T) {
	ctx := testCtx(t, 20*time.Minute)
	host := startHostPG(ctx, t)
	dir := t.TempDir()
	web := fileServer(t, dir)
	srv := startServer(t, host.Port, web)
	se := srv.createSession(t)
	g := startVM(ctx, t, se.RelayURL, "")

	mustPsql(ctx, t, host.conn("postgres"), "-c", "create database shop")
	shop := host.conn("shop")
	mustPsql(ctx, t, shop, "-c", shopSQL)
	want := mustPsql(ctx, t, shop, "-c", shopSumSQL)
	if !strings.Contains(want, "orders=80000:") || !strings.Contains(want, "customers=20000:") || !strings.Contains(want, "products=5000:") {
		t.Fatalf("host database: %s", want)
	}
	t.Logf("host database: %s", want)
	pgDump := filepath.Join(pgtest.BinDir(), "pg_dump")
	run(ctx, t, pgDump, "-d", shop, "-f", filepath.Join(dir, "host.sql"))
	run(ctx, t, pgDump, "-d", shop, "-Fc", "-f", filepath.Join(dir, "host.dump"))
	for _, f := range []string{"host.sql", "host.dump"} {
		st, _ := os.Stat(filepath.Join(dir, f))
		t.Logf("host %s: %d bytes", f, st.Size())
	}

	vmRun := func(what, cmd string) {
		t.Helper()
		t0 := time.Now()
		out, err := g.program(ctx, cmd+" 2>&1")
		if err != nil {
			t.Fatalf("%s in the VM: %v\n%s", what, err, strings.Join(out, "\n"))
		}
		t.Logf("%s in the VM: %s", what, time.Since(t0).Round(time.Millisecond))
	}
	vmSum := func(db string) string {
		t.Helper()
		out, err := g.program(ctx, fmt.Sprintf(`psql -XAtq -v ON_ERROR_STOP=1 -d %s -c "%s" 2>&1`, db, strings.ReplaceAll(shopSumSQL, "\n", " ")))
		if err != nil || len(out) != 1 {
			t.Fatalf("checksum of %s in the VM: %v %q", db, err, out)
		}
		return out[0]
	}
	createDB := func(name string) {
		t.Helper()
		if _, err := g.Query(ctx, "create database "+name); err != nil {
			t.Fatalf("create database %s in the VM: %v", name, err)
		}
	}
	base := fmt.Sprintf("http://%s:%d", HostAlias, web)

	// 1. A host plain dump, fetched into the VM and restored by psql.
	vmRun("fetch host.sql", fmt.Sprintf("wget -q -O /tmp/host.sql %s/host.sql", base))
	createDB("r_plain")
	vmRun("psql -f host.sql", "psql -X -q -v ON_ERROR_STOP=1 -d r_plain -f /tmp/host.sql >/dev/null")
	if got := vmSum("r_plain"); got != want {
		t.Errorf("plain dump restored in the VM:\n got %s\nwant %s", got, want)
	}

	// 2. A host custom-format dump, restored by pg_restore 17.
	vmRun("fetch host.dump", fmt.Sprintf("wget -q -O /tmp/host.dump %s/host.dump", base))
	createDB("r_custom")
	vmRun("pg_restore host.dump", "pg_restore -d r_custom --exit-on-error /tmp/host.dump")
	if got := vmSum("r_custom"); got != want {
		t.Errorf("custom dump restored in the VM:\n got %s\nwant %s", got, want)
	}
	vmRun("remove the fetched dumps", "rm -f /tmp/host.sql /tmp/host.dump")

	// 3. pg_dump inside the VM, against the host, over the network.
	vmRun("pg_dump -h 10.0.2.3", fmt.Sprintf("PGPASSWORD=%s pg_dump -h %s -p %d -U postgres -d shop -Fc -f /tmp/net.dump", host.Password, HostAlias, host.Port))
	createDB("r_net")
	vmRun("pg_restore net.dump", "pg_restore -d r_net --exit-on-error /tmp/net.dump && rm -f /tmp/net.dump")
	if got := vmSum("r_net"); got != want {
		t.Errorf("pg_dump over the network restored in the VM:\n got %s\nwant %s", got, want)
	}

	// 4. Out: a plain dump made in the VM (pg_dump 17), gzipped, read out
	// through the guest agent (pg_read_binary_file in 256 KiB chunks) and
	// restored on the host by psql 15. (Uploads over the network work since
	// the interrupt-controller fix in guest/initramfs-init; TestUploads.)
	// Tables made in the tab too, with the DDL that gives columns new
	// attribute options in Debian's 17.12 build (pg_attver on CREATE, ADD
	// COLUMN and a rewriting ALTER TYPE; docs/vm.md, "Dumps to other
	// servers"), and an option of the user's own that must survive. No
	// indexes: shopSumSQL lists the public schema's.
	vmRun("tables made in the tab", `psql -X -q -v ON_ERROR_STOP=1 -d r_net -c "
		create table tabmade (id int, v text);
		alter table tabmade add column w int;
		insert into tabmade select g, 'v' || g, g * 2 from generate_series(1, 100) g;
		alter table tabmade alter column id type bigint;
		alter table tabmade alter column v set (n_distinct = 100);
		create table tabparted (k int, v text) partition by range (k);
		create table tabparted_1 partition of tabparted for values from (0) to (1000);
		alter table tabparted add column extra int;
		insert into tabparted select g, 'p' || g, g from generate_series(0, 99) g;"`)
	if out, err := g.program(ctx, `psql -XAtq -d r_net -c "select count(*) from pg_attribute where attrelid >= 16384 and attoptions::text like '%pg_attver%'"`); err != nil || len(out) != 1 || out[0] != "0" {
		t.Errorf("columns with pg_attver in the VM: %q, %v", out, err)
	}
	vmRun("pg_dump r_net | gzip", "pg_dump -d r_net | gzip -1 > /tmp/vm.sql.gz")
	t0 := time.Now()
	size, err := strconv.Atoi(g.value(ctx, t, `select (pg_stat_file('/tmp/vm.sql.gz')).size`))
	if err != nil {
		t.Fatal(err)
	}
	var gz []byte
	for off := 0; off < size; off += 256 << 10 {
		chunk := g.value(ctx, t, `select encode(pg_read_binary_file('/tmp/vm.sql.gz', $1, $2), 'base64')`, off, 256<<10)
		b, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(chunk, "\n", ""))
		if err != nil {
			t.Fatalf("chunk at %d: %v", off, err)
		}
		gz = append(gz, b...)
	}
	if len(gz) != size {
		t.Fatalf("read %d bytes of the VM's dump, want %d", len(gz), size)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip the VM's dump: %v", err)
	}
	t.Logf("VM dump read out through the agent: %d bytes gzipped in %s", size, time.Since(t0).Round(time.Millisecond))
	if !bytes.Contains(raw, []byte("-- Dumped by pg_dump version 17")) {
		t.Errorf("the VM's dump does not say pg_dump 17 made it")
	}
	// Nothing of the image's own may travel: neither the pg_attver option
	// nor the pgwasm extension that removes it.
	for _, bad := range []string{"pg_attver", "pgwasm"} {
		if bytes.Contains(raw, []byte(bad)) {
			t.Errorf("the VM's dump mentions %s:\n%s", bad, grepLines(string(raw), bad, 5))
		}
	}
	if !bytes.Contains(raw, []byte("n_distinct='100'")) && !bytes.Contains(raw, []byte("n_distinct=100")) {
		t.Errorf("the VM's dump lost the user's own column option n_distinct")
	}
	var kept []string
	dropped := 0
	for _, l := range strings.SplitAfter(string(raw), "\n") {
		if strings.HasPrefix(l, "SET transaction_timeout") {
			dropped++
			continue
		}
		kept = append(kept, l)
	}
	if err := os.WriteFile(filepath.Join(dir, "vm15.sql"), []byte(strings.Join(kept, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("VM dump: %d bytes, %d transaction_timeout line(s) dropped for PostgreSQL 15", len(raw), dropped)
	mustPsql(ctx, t, host.conn("postgres"), "-c", "create database back")
	// psql -v ON_ERROR_STOP=1 (mustPsql): any error fails the restore.
	mustPsql(ctx, t, host.conn("back"), "-f", filepath.Join(dir, "vm15.sql"))
	if got := mustPsql(ctx, t, host.conn("back"), "-c", shopSumSQL); got != want {
		t.Errorf("VM dump restored on the host:\n got %s\nwant %s", got, want)
	}
	const tabSum = `select (select count(*) || ':' || sum(w) from tabmade) || ' ' || (select count(*) || ':' || sum(extra) from tabparted)`
	if got := mustPsql(ctx, t, host.conn("back"), "-c", tabSum); got != "100:10100 100:4950" {
		t.Errorf("tables made in the tab, restored on PostgreSQL 15: %q, want 100:10100 100:4950", got)
	}
	if got := mustPsql(ctx, t, host.conn("back"), "-c", "select attoptions::text from pg_attribute where attrelid = 'tabmade'::regclass and attname = 'v'"); got != "{n_distinct=100}" {
		t.Errorf("tabmade.v's options on PostgreSQL 15: %q, want {n_distinct=100}", got)
	}
}

// grepLines returns up to n lines of s that contain sub.
func grepLines(s, sub string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && len(out) < n {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
