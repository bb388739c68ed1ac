package vm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// bootWith full-boots the image with memMB of RAM and extra kernel command
// line arguments (guest/init reads pgwasm.overcommit_ratio= and the like),
// and waits until PostgreSQL answers. vm.Start cannot change the command
// line; this is for measuring the memory settings.
func bootWith(t *testing.T, memMB int, extra string) (context.Context, *vm.VM) {
	t.Helper()
	dir, _ := env(t)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	p := func(name string) string { return filepath.Join(dir, name) }
	v, err := vm.Boot(ctx, vm.BootOptions{
		Memory: memMB,
		Files: vm.BootFiles{
			Kernel: p(m.Kernel.File), Initrd: p(m.Initrd.File), BIOS: p(m.BIOS.File), VGABIOS: p(m.VGABIOS.File),
			FSJSON: p(m.FS.File), BlobDir: p(m.FS.BlobDir), Cmdline: strings.TrimSpace(m.Cmdline + " " + extra), NetDevice: m.NetDevice,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	// wait_agent waits 60 s at a time; a loaded machine boots slower.
	for i := 0; ; i++ {
		_, err := v.HarnessCall(ctx, "wait_agent")
		if err == nil {
			break
		}
		if i == 9 {
			t.Fatalf("agent: %v\n%s", err, v.ConsoleTail())
		}
	}
	waitStatus(ctx, t, v, "ready", 5*time.Minute)
	return ctx, v
}

// agentStatus is the agent's status answer.
func agentStatus(ctx context.Context, v *vm.VM) (string, error) {
	raw, err := v.Request(ctx, map[string]any{"op": "status"})
	if err != nil {
		return "", err
	}
	var st struct {
		Postgres string `json:"postgres"`
	}
	err = json.Unmarshal(raw, &st)
	return st.Postgres, err
}

func waitStatus(ctx context.Context, t *testing.T, v *vm.VM, want string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st, err := agentStatus(ctx, v)
		if err != nil {
			t.Fatal(err)
		}
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres is %q after %s, want %q", st, limit, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func value(ctx context.Context, t *testing.T, v *vm.VM, sql string, params ...any) string {
	t.Helper()
	res, err := v.Query(ctx, sql, params...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 || res.Rows[0][0] == nil {
		t.Fatalf("%s: rows %v", sql, res.Rows)
	}
	return *res.Rows[0][0]
}

// meminfo returns /proc/meminfo's figures in kB.
func meminfo(ctx context.Context, t *testing.T, v *vm.VM) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, line := range strings.Split(value(ctx, t, v, "select pg_read_file('/proc/meminfo')"), "\n") {
		k, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) > 0 {
			out[k], _ = strconv.Atoi(f[0])
		}
	}
	return out
}

func memSummary(mi map[string]int) string {
	return fmt.Sprintf("MemTotal %d MB, MemAvailable %d MB, Committed_AS %d MB of CommitLimit %d MB",
		mi["MemTotal"]>>10, mi["MemAvailable"]>>10, mi["Committed_AS"]>>10, mi["CommitLimit"]>>10)
}

// consoleValue runs a query in the psql console's session (ttyS0) and
// returns the one value it prints (psql's aligned format, unaligned here).
func consoleValue(ctx context.Context, t *testing.T, v *vm.VM, tag, sql string) string {
	t.Helper()
	re := regexp.MustCompile(tag + `=(\S+)`)
	// The tag and its "=" are joined in SQL, so the echoed command line
	// cannot match: only the result row does.
	out, err := v.Console(ctx, fmt.Sprintf("select '%s' || '=' || (%s) as v;\n", tag, sql), tag+`=\S+\s`, 2*time.Minute)
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	m := re.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		t.Fatalf("console printed no %s=...:\n%s", tag, out)
	}
	return m[len(m)-1][1]
}

// oversized is a query whose memory grows past what a 128 MB VM has, a few
// MB at a time (string_agg doubles its buffer up to 256 MB), the way the
// 65,535-parameter statement of issue #17 did: without strict overcommit the
// kernel grants the address space and the OOM killer ends the backend when
// it touches the pages; with it the allocation fails in PostgreSQL.
const oversized = "select length(string_agg(repeat('x', 1000), '')) from generate_series(1, 200000)"

// One query that wants more memory than the VM has ends with "out of
// memory" for its own session: the other sessions (the psql console's,
// opened at boot) keep working, no backend is killed and no crash recovery
// runs (the postmaster's start time is unchanged).
func TestOversizedQuery(t *testing.T) {
	image, _ := env(t)
	ctx, v := startVM(t, image, 10*time.Minute)
	started := value(ctx, t, v, "select pg_postmaster_start_time()::text")
	agentPID := value(ctx, t, v, "select pg_backend_pid()::text")
	consolePID := consoleValue(ctx, t, v, "pid", "pg_backend_pid()")
	t.Logf("before: %s", memSummary(meminfo(ctx, t, v)))

	for _, q := range []struct {
		name   string
		sql    string
		params []any
	}{
		{"string_agg to 200 MB", oversized, nil},
		// The 65,535-parameter statement of issue #17 is left out: its
		// request (about 1 MB of JSON) stalled on the agent's serial line
		// (session 4, not yet understood); the fast channel of issue #11
		// carries large requests and brings it back.
	} {
		t0 := time.Now()
		_, err := v.Query(ctx, q.sql, q.params...)
		var qe *vm.SQLError
		switch {
		case err == nil:
			t.Logf("%s: succeeded in %s", q.name, time.Since(t0).Round(time.Millisecond))
		case errors.As(err, &qe) && qe.SQLState == "53200":
			t.Logf("%s: %v after %s", q.name, err, time.Since(t0).Round(time.Millisecond))
		default:
			t.Errorf("%s: %v, want out of memory (53200) or success", q.name, err)
		}
		// The same session goes on.
		if got := value(ctx, t, v, "select pg_backend_pid()::text"); got != agentPID {
			t.Fatalf("after %s the agent's session is backend %s, was %s", q.name, got, agentPID)
		}
	}
	if got := consoleValue(ctx, t, v, "pid2", "pg_backend_pid()"); got != consolePID {
		t.Errorf("the console's session is backend %s, was %s", got, consolePID)
	}
	if got := value(ctx, t, v, "select pg_postmaster_start_time()::text"); got != started {
		t.Errorf("postmaster start time %s, was %s: the server restarted (crash recovery)", got, started)
	}
	log := value(ctx, t, v, "select pg_read_file('/var/log/postgresql/postgresql.log')")
	for _, bad := range []string{"terminated by signal", "terminating any other active server processes", "database system was interrupted", "redo starts"} {
		if strings.Contains(log, bad) {
			t.Errorf("the server log says %q:\n%s", bad, lastLines(log, 20))
		}
	}
	if st, err := agentStatus(ctx, v); err != nil || st != "ready" {
		t.Errorf("status %q, %v", st, err)
	}
	t.Logf("after: %s", memSummary(meminfo(ctx, t, v)))
}

// TestMeasureMemory prints what the guest commits and holds, idle and with
// N connections (PGWASM_MEASURE=MB[,MB...], e.g. 128,256): the figures in
// docs/vm.md, "Memory". Extra kernel arguments come from
// PGWASM_MEASURE_CMDLINE.
func TestMeasureMemory(t *testing.T) {
	sizes := os.Getenv("PGWASM_MEASURE")
	if sizes == "" {
		t.Skip("PGWASM_MEASURE is not set")
	}
	for _, s := range strings.Split(sizes, ",") {
		mb, _ := strconv.Atoi(s)
		t.Run(s+"MB", func(t *testing.T) {
			var ctx context.Context
			var v *vm.VM
			if mb == 0 { // the image's 128 MB snapshot
				image, _ := env(t)
				ctx, v = startVM(t, image, 20*time.Minute)
			} else {
				ctx, v = bootWith(t, mb, os.Getenv("PGWASM_MEASURE_CMDLINE"))
			}
			maxConns, _ := strconv.Atoi(value(ctx, t, v, "show max_connections"))
			t.Logf("%d MB: max_connections %d, overcommit %s ratio %s; idle: %s", mb, maxConns,
				strings.TrimSpace(value(ctx, t, v, "select pg_read_file('/proc/sys/vm/overcommit_memory')")),
				strings.TrimSpace(value(ctx, t, v, "select pg_read_file('/proc/sys/vm/overcommit_ratio')")),
				memSummary(meminfo(ctx, t, v)))
			if _, err := v.Exec(ctx, "create extension if not exists dblink"); err != nil {
				t.Fatal(err)
			}
			n := 0
			var err error
			for n < maxConns && err == nil {
				n, err = openConnections(ctx, v, n, min(n+4, maxConns))
				t.Logf("%d MB: %d connections, each ran a query (%v); %s", mb, n, err, memSummary(meminfo(ctx, t, v)))
			}
			t0 := time.Now()
			_, err = v.Query(ctx, oversized)
			t.Logf("%d MB: with %d connections the oversized query: %v (%s); %s", mb, n, err, time.Since(t0).Round(time.Millisecond), memSummary(meminfo(ctx, t, v)))
		})
	}
}

// openConnections opens dblink connections from the agent's session,
// numbered from have+1, each running a query that reads the catalog, until
// want are open or one fails; it returns how many are open.
func openConnections(ctx context.Context, v *vm.VM, have, want int) (int, error) {
	for i := have + 1; i <= want; i++ {
		_, err := v.Query(ctx, "select dblink_connect('c' || $1, 'dbname=postgres'), (select n from dblink('c' || $1, 'select count(*) from pg_class join pg_attribute on attrelid = pg_class.oid') as t(n int))", i)
		if err != nil {
			return i - 1, err
		}
	}
	return want, nil
}

// documentedConnections is max_connections for a 128 MB VM, as guest/memory
// sets it and docs/vm.md ("Memory") documents it.
const documentedConnections = 14

// A 128 MB VM holds its documented max_connections: with the agent's and
// the console's sessions open, the rest are opened (dblink from the agent's
// session, over the Unix socket, as postgres) and each runs a query; the
// next one is refused by PostgreSQL's own limit, not by a failed fork; and
// an oversized query still fails alone while they are all open.
func TestConnections(t *testing.T) {
	image, _ := env(t)
	ctx, v := startVM(t, image, 20*time.Minute)
	if got := value(ctx, t, v, "show max_connections"); got != strconv.Itoa(documentedConnections) {
		t.Fatalf("max_connections %s in the 128 MB state, docs/vm.md says %d", got, documentedConnections)
	}
	if _, err := v.Exec(ctx, "create extension if not exists dblink"); err != nil {
		t.Fatal(err)
	}
	busy, _ := strconv.Atoi(value(ctx, t, v, "select count(*) from pg_stat_activity where backend_type = 'client backend'"))
	want := documentedConnections - busy
	t0 := time.Now()
	n, err := openConnections(ctx, v, 0, want)
	if err != nil || n != want {
		t.Fatalf("opened %d of %d connections (%d were busy): %v; %s", n, want, busy, err, memSummary(meminfo(ctx, t, v)))
	}
	t.Logf("%d connections (%d opened, each ran a query) in %s; %s", documentedConnections, n, time.Since(t0).Round(time.Second), memSummary(meminfo(ctx, t, v)))
	_, err = openConnections(ctx, v, n, n+1)
	if err == nil || !strings.Contains(err.Error(), "too many clients") {
		t.Errorf("connection %d: %v, want PostgreSQL's \"too many clients\"", documentedConnections+1, err)
	}
	_, err = v.Query(ctx, oversized)
	var qe *vm.SQLError
	if !errors.As(err, &qe) || qe.SQLState != "53200" {
		t.Errorf("oversized query with every connection open: %v, want out of memory (53200)", err)
	}
	// Every connection still answers.
	res, err := v.Query(ctx, "select count(*) from (select dblink_get_connections()) c, unnest(dblink_get_connections()) n where (select x from dblink(n, 'select 1') as t(x int)) = 1")
	if err != nil || *res.Rows[0][0] != strconv.Itoa(n) {
		t.Errorf("connections answering after the oversized query: %v %v, want %d", res, err, n)
	}
}
