package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setSystemClock sets the guest's wall clock: after a state restore it is
// frozen at the time the state was saved.
func setSystemClock(t time.Time) error {
	tv := unix.NsecToTimeval(t.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("cannot set clock: %w", err)
	}
	return nil
}

func syncFS() { unix.Sync() }

// snapshotLog reports each step of prepare_snapshot.
type snapshotLog struct {
	Checkpoint    bool     `json:"checkpoint"`
	Synced        bool     `json:"synced"`
	Reclaimed     bool     `json:"reclaimed"`
	DroppedCaches bool     `json:"dropped_caches"`
	Compacted     bool     `json:"compacted"`
	Notes         []string `json:"notes,omitempty"`
}

// prepareSnapshot makes the guest's memory small and consistent before the
// host saves a state: a CHECKPOINT so the restored server needs no recovery,
// then dropping clean pages so they are not stored (v86 stores only non-zero
// pages and the kernel zeroes freed ones with init_on_free=1). Every step is
// tried even if an earlier one failed.
//
// Dropping the page cache leaves the pages that processes map: program
// code and libraries, most of the RAM that is left. Proactive reclaim of the
// root memory cgroup (memory.reclaim) unmaps and frees those too; the few
// that the first request after a restore needs are then faulted in again by
// one query (warm-up), so they are in the state and need no 9p fetch.
func (s *server) prepareSnapshot(ctx context.Context, thorough bool) response {
	var log snapshotLog
	var errs []error
	note := func(step string) {
		if s.sys.meminfo != "" {
			log.Notes = append(log.Notes, step+": "+memSummary(s.sys.meminfo))
		}
	}
	note("before")
	if _, err := s.db.Exec(ctx, "CHECKPOINT"); err != nil {
		errs = append(errs, fmt.Errorf("checkpoint failed: %w", err))
	} else {
		log.Checkpoint = true
	}
	s.sys.sync()
	log.Synced = true
	// The agent's own garbage goes back to the kernel, which zeroes it.
	debug.FreeOSMemory()
	if thorough && s.sys.reclaim != "" {
		if err := s.reclaimFiles(); err != nil {
			errs = append(errs, err)
		} else {
			log.Reclaimed = true
		}
		note("reclaimed")
	}
	if err := writeKnob(s.sys.dropCaches, "3"); err != nil {
		errs = append(errs, err)
	} else {
		log.DroppedCaches = true
	}
	note("dropped")
	if thorough && s.sys.warm {
		s.warmUp(ctx, &log)
		if s.sys.console != "" {
			// Twice, more than PostgreSQL's idle statistics flush interval
			// (10 s) apart: the flush that the first query arms runs in
			// between, and its code is then resident for the flush that
			// fires when the clock jumps after a restore.
			for i := 0; i < 2; i++ {
				if i > 0 {
					time.Sleep(11 * time.Second)
				}
				if err := s.warmConsole(ctx); err != nil {
					log.Notes = append(log.Notes, "console warm-up: "+err.Error())
					break
				}
			}
			if err := s.warmConsoleCancel(ctx); err != nil {
				log.Notes = append(log.Notes, "console cancel warm-up: "+err.Error())
			}
		}
		// Run the agent's own garbage collector and scavenger now, so their
		// code is resident too, and the warm-up's garbage is given back.
		debug.FreeOSMemory()
		note("warmed")
		// Pages that the warm-up read but did not map (data files and WAL,
		// which PostgreSQL reads with read() into its own buffers) go again.
		if err := writeKnob(s.sys.dropCaches, "3"); err != nil {
			log.Notes = append(log.Notes, err.Error())
		}
		note("dropped again")
	}
	// Compaction is optional: kernels without CONFIG_COMPACTION lack the file.
	if s.sys.compactMemory == "" {
		log.Notes = append(log.Notes, "memory compaction disabled")
	} else if err := writeKnob(s.sys.compactMemory, "1"); err != nil {
		log.Notes = append(log.Notes, err.Error())
	} else {
		log.Compacted = true
	}
	s.log.Info("prepare_snapshot", "notes", strings.Join(log.Notes, "; "), "slabs", topSlabs("/proc/slabinfo", 12))
	if err := errors.Join(errs...); err != nil {
		r := fail(err)
		r.Snapshot = &log
		return r
	}
	return response{OK: true, Snapshot: &log}
}

// reclaimFiles asks the root memory cgroup to reclaim as much as there is
// file cache (page cache less shared memory, which needs swap), a few times
// while that shrinks. Asking for more than there is would make the kernel
// evict and re-read the pages running processes touch, over and over.
//
// A missing memory.reclaim is an error, not a note: without it every page
// mapped since boot stays in the state (about 2.3 MB more of a 128 MB
// state, docs/vm.md), and a snapshot build should not pass with that.
func (s *server) reclaimFiles() error {
	for i := 0; i < 4; i++ {
		m := readMeminfo(s.sys.meminfo)
		file := m["Cached"] - m["Shmem"]
		if file < 1024 {
			return nil
		}
		err := writeKnob(s.sys.reclaim, strconv.FormatInt(file, 10)+"K")
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w (is the memory controller enabled in the root cgroup's cgroup.subtree_control?)", err)
		}
		if err != nil && !errors.Is(err, syscall.EAGAIN) {
			return err
		}
		if after := readMeminfo(s.sys.meminfo); m["Cached"]-after["Cached"] < 1024 {
			return nil
		}
	}
	return nil
}

// readMeminfo returns /proc/meminfo's values in kB.
func readMeminfo(path string) map[string]int64 {
	m := map[string]int64{}
	data, err := os.ReadFile(path)
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
			m[k] = n
		}
	}
	return m
}

// warmSQL is a typical first session, rolled back: the server code it runs
// (parser, planner, executor, DDL, indexes, common functions) is then in the
// state, so a first query after a restore rarely needs a page of the
// postgres binary that is not resident, which would make v86 fetch the whole
// file (4.5 MB).
const warmSQL = `BEGIN;
CREATE TEMP TABLE pgwasm_warm (id serial PRIMARY KEY, t text NOT NULL, n numeric, f float8, d date DEFAULT current_date, ts timestamptz DEFAULT now(), j jsonb, a int[]);
INSERT INTO pgwasm_warm (t, n, f, j, a) SELECT 'x' || g, g * 1.5, g / 3.0, jsonb_build_object('g', g, 's', 'v' || g), ARRAY[g, g + 1] FROM generate_series(1, 20) g;
CREATE INDEX ON pgwasm_warm (t);
ANALYZE pgwasm_warm;
UPDATE pgwasm_warm SET n = n + 1, t = upper(t) WHERE id % 2 = 0;
DELETE FROM pgwasm_warm WHERE id > 18;
SELECT t, count(*) AS c, sum(n), avg(f), max(ts), min(d) FROM pgwasm_warm w JOIN generate_series(1, 50) g ON g = w.id WHERE t LIKE 'x%' OR t ILIKE 'X1%' GROUP BY t HAVING count(*) > 0 ORDER BY 2 DESC, 1 LIMIT 5;
SELECT j->>'s' AS s, j @> '{"g": 1}' AS has, to_char(ts, 'YYYY-MM-DD HH24:MI'), length(t), t || 'y', lower(t), substr(t, 2), a[1], round(n, 1), coalesce(NULL, 1), CASE WHEN id > 5 THEN 'big' ELSE 'small' END FROM pgwasm_warm WHERE id IN (1, 2, 3) ORDER BY id DESC;
WITH s AS (SELECT id, row_number() OVER (ORDER BY n DESC) AS r FROM pgwasm_warm) SELECT * FROM s WHERE r < 3 UNION ALL SELECT 0, 0;
SELECT string_agg(t, ',' ORDER BY id), json_agg(id), array_agg(n) FROM pgwasm_warm WHERE id < 4;
EXPLAIN SELECT * FROM pgwasm_warm WHERE t = 'x1';
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid WHERE c.relname = 'pgwasm_warm' AND a.attnum > 0;
SELECT * FROM pg_stat_activity WHERE pid = pg_backend_pid();
SELECT version(), current_setting('server_version'), pg_database_size(current_database()) > 0, '2024-01-01'::date + 1, interval '1 day' * 2, gen_random_uuid() IS NOT NULL, md5('x'), 1.5::numeric / 3, 2 ^ 10, now() - interval '1 hour' < now();
ROLLBACK`

// warmUp runs the requests a host sends first after a restore through the
// whole request path (decoding, dispatch, SQL, encoding), so the agent's and
// the server's pages they touch are resident when the state is saved.
func (s *server) warmUp(ctx context.Context, log *snapshotLog) {
	sql, _ := json.Marshal(warmSQL)
	// add_entropy is what a host sends first after every restore; the
	// warm-up sends it through the same decoding and handler.
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		log.Notes = append(log.Notes, "warm-up: no entropy: "+err.Error())
	}
	entropy, _ := json.Marshal(seed)
	bgSQL, _ := json.Marshal(`DO $$ BEGIN IF current_setting('server_version_num')::int >= 160000 AND current_setting('wal_level') <> 'minimal' THEN PERFORM pg_log_standby_snapshot(); END IF; END $$`)
	for _, line := range []string{
		`{"id":0,"op":"ping"}`,
		`{"id":0,"op":"status"}`,
		`{"id":0,"op":"set_time","unix_ms":` + strconv.FormatInt(s.sys.now().UnixMilli(), 10) + `}`,
		`{"id":0,"op":"add_entropy","entropy":` + string(entropy) + `}`,
		`{"id":0,"op":"query","sql":"select 1"}`,
		`{"id":0,"op":"query","sql":"select $1::int + 1 as two, now()","params":["1"]}`,
		`{"id":0,"op":"exec","sql":"select 1 as one; select 'a'::text as a"}`,
		`{"id":0,"op":"exec","sql":` + string(sql) + `}`,
		// What the background processes do first after a restore, when the
		// clock has jumped by days: a timed checkpoint (checkpointer), a
		// standby snapshot record (bgwriter, wal_level logical), vacuum
		// (autovacuum workers).
		`{"id":0,"op":"exec","sql":"CHECKPOINT"}`,
		`{"id":0,"op":"exec","sql":` + string(bgSQL) + `}`,
		`{"id":0,"op":"exec","sql":"VACUUM ANALYZE pg_catalog.pg_class"}`,
	} {
		for _, v := range s.handleLine(ctx, []byte(line)) {
			b, _ := json.Marshal(v)
			if r, ok := v.(response); ok && !r.OK {
				log.Notes = append(log.Notes, "warm-up failed: "+string(b))
			}
		}
	}
}

// warmConsole types the warm-up SQL into the psql console, as a user would
// after a restore, and waits until psql's session is idle again, so the
// pages of psql, its libraries and its backend are resident in the state.
func (s *server) warmConsole(ctx context.Context) error {
	return s.typeIntoConsole(ctx, " select 1 as one;\n", "the warm-up query")
}

// reseedSessions makes every PostgreSQL session reseed its random
// generators (random() and OpenSSL's, behind gen_random_uuid) from the
// kernel before its next statement: it adds one to the pgwasm module's
// generation counter, which every backend reads from shared memory
// (guest/pgwasm-ext/pgwasm.c). Sessions saved in the state, the agent's own
// and the psql console's, would otherwise draw the same numbers after every
// restore of one state; they keep their state, and the restore waits for
// no query (docs/vm.md, "Random numbers after a restore").
//
// The server creates the file when it starts: without it no server has
// started, so there is no session to reseed, and the first ones will start
// from the reseeded kernel.
func reseedSessions(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot reseed PostgreSQL's sessions: %w", err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("cannot reseed PostgreSQL's sessions: %w", err)
	}
	binary.NativeEndian.PutUint32(b[:], binary.NativeEndian.Uint32(b[:])+1)
	// One aligned 4-byte write: a backend reads the old or the new value.
	if _, err := f.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("cannot reseed PostgreSQL's sessions: %w", err)
	}
	return nil
}

// consoleCancelSQL cancels the console's running statement ("active" as
// $1) as the page does on Ctrl-C (cancelConsoleQuery in web/src/pgwasm.ts,
// which reads pg_stat_get_activity() directly: cheaper to plan; the view
// here calls it, so this warms the page's query too).
const consoleCancelSQL = "select pg_cancel_backend(pid) from pg_stat_activity where pid <> pg_backend_pid() " +
	"and backend_type = 'client backend' and application_name = 'psql' and client_addr is null " +
	"and state = $1 order by backend_start limit 1"

// warmConsoleCancel runs a Ctrl-C as the page handles it: a statement
// typed into psql is cancelled through the agent's session. The pages of
// that path (the agent's query, pg_cancel_backend's role checks, the
// backend's abort, psql printing the error) are then resident in the
// state: faulted in over 9p after a restore they made the first Ctrl-C take
// 10-20 s with the page's CPU throttled 4x (issue #16 item 4). The leading
// space keeps it out of psql's history (HISTCONTROL=ignorespace in the
// image's .psqlrc).
func (s *server) warmConsoleCancel(ctx context.Context) error {
	started := s.sys.now()
	if err := typeInto(s.sys.console, " select pg_sleep(30);\n"); err != nil {
		return err
	}
	line, _ := json.Marshal(map[string]any{"id": 0, "op": "query", "sql": consoleCancelSQL, "params": []string{"active"}})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			return errors.New("psql's statement was not running within 20 s")
		}
		if r, ok := s.handleLine(ctx, line)[0].(response); ok && r.OK && r.result != nil && len(r.Rows) == 1 && r.Rows[0][0] != nil && *r.Rows[0][0] == "t" {
			break
		}
	}
	return s.waitConsoleIdle(ctx, started, "the cancelled statement")
}

// typeIntoConsole types text into the psql console and waits until psql's
// session is idle again.
func (s *server) typeIntoConsole(ctx context.Context, text, what string) error {
	started := s.sys.now()
	if err := typeInto(s.sys.console, text); err != nil {
		return err
	}
	return s.waitConsoleIdle(ctx, started, what)
}

// waitConsoleIdle waits until psql's session went idle after started.
func (s *server) waitConsoleIdle(ctx context.Context, started time.Time, what string) error {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		res, err := s.db.Query(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'psql' AND state = 'idle' AND state_change > to_timestamp($1::float8 / 1000)",
			[]*string{ptr(strconv.FormatInt(started.UnixMilli(), 10))})
		if err != nil {
			return err
		}
		if len(res.Rows) == 1 && res.Rows[0][0] != nil && *res.Rows[0][0] != "0" {
			return nil
		}
	}
	return fmt.Errorf("psql did not finish %s within 20 s", what)
}

// maxWinsize bounds set_winsize: more rows or columns than any screen has
// are a caller's mistake.
const maxWinsize = 1000

// setWinsize sets a terminal's size. The kernel then sends SIGWINCH to the
// terminal's foreground process group, so psql and readline take the new
// width without any process being started (typing `\! stty` into psql cost
// a fork and exec, and the 9p fetch of busybox and libc, on every page load).
func setWinsize(tty string, rows, cols int) error {
	f, err := os.OpenFile(tty, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("cannot open the console: %w", err)
	}
	defer f.Close()
	ws := &unix.Winsize{Row: uint16(rows), Col: uint16(cols)}
	if err := unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, ws); err != nil {
		return fmt.Errorf("cannot set the size of %s: %w", tty, err)
	}
	return nil
}

// typeInto pushes text into a terminal's input queue (TIOCSTI; root only).
func typeInto(tty, text string) error {
	f, err := os.OpenFile(tty, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := 0; i < len(text); i++ {
		c := text[i]
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TIOCSTI, uintptr(unsafe.Pointer(&c))); e != 0 {
			return fmt.Errorf("cannot type into %s: %w", tty, e)
		}
	}
	return nil
}

func ptr(s string) *string { return &s }

// topSlabs lists the largest kernel slab caches (name=kB), for the log.
func topSlabs(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	type slab struct {
		name string
		kb   int64
	}
	var all []slab
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		// name active_objs num_objs objsize objperslab pagesperslab : tunables ... : slabdata active_slabs num_slabs ...
		if len(f) < 16 || f[0] == "#" {
			continue
		}
		slabs, err1 := strconv.ParseInt(f[14], 10, 64)
		pages, err2 := strconv.ParseInt(f[5], 10, 64)
		if err1 == nil && err2 == nil {
			all = append(all, slab{f[0], slabs * pages * 4})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].kb > all[j].kb })
	var out []string
	for i := 0; i < len(all) && i < n; i++ {
		out = append(out, all[i].name+"="+strconv.FormatInt(all[i].kb, 10))
	}
	return strings.Join(out, " ")
}

// memSummary condenses /proc/meminfo to the fields that say what a state
// will hold, in kB.
func memSummary(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	want := map[string]bool{"MemFree": true, "Cached": true, "Mapped": true, "AnonPages": true, "Shmem": true, "Slab": true, "PageTables": true, "KernelStack": true}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && want[k] {
			out = append(out, k+"="+strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return strings.Join(out, " ")
}

// writeKnob writes a value to a /proc/sys file, which must already exist.
func writeKnob(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cannot open %s: %w", path, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return nil
}
