package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// countQuery is the CPU-bound query compared between the VM and the host.
const countQuery = "select count(*) from generate_series(1,1000000)"

// stateInfo is one snapshot in the image directory.
type stateInfo struct {
	MemoryMB int
	Size     int64 // zstd, as downloaded
	RawSize  int64
}

// imageSize is what the image directory holds.
type imageSize struct {
	Key        string
	Postgres   string
	BlobBytes  int64 // every 9p blob as stored
	Blobs      int
	FSJSON     int64
	FSBytes    int64 // every file of the tree, uncompressed
	Files      int
	Kernel     int64
	Initrd     int64
	BIOS       int64 // bios.bin + vgabios.bin
	V86Runtime int64 // v86.wasm + libv86.mjs from the harness
}

// vmResults are the VM measurements of one run (issue #2).
type vmResults struct {
	Image  imageSize
	States []stateInfo

	RestoreMemory   int
	Restore         Sample // ms from vm.Start to the first query's result
	RestoreEmulator Sample // ms until the emulator runs
	RestoreBlob     Sample // 9p blob bytes fetched until the first query's result
	RestoreFiles    Sample
	RestoreRSS      Sample // Node's RSS after the first query

	FullBoot      Sample // ms to the first query's result
	FullBootAgent Sample // ms until the guest agent answered
	FullBootBlob  Sample
	FullBootFiles Sample

	AgentRTT     Sample // ms for `select 1` in an open VM session, on the default agent channel
	AgentChannel string // the default agent channel (the image's first choice)
	// Channels compares the agent's channels in one VM (issue #11).
	Channels       []channelResult
	VMQuery        Sample // ms for countQuery in the VM
	NativeQuery    Sample // ms for countQuery on the host
	VMVersion      string
	NativeVersion  string
	NativeBinDir   string
	SnapshotsTaken []string
	Notes          []string // runs skipped because the time budget ran out
}

// measureVM runs the VM part. Failures of one step are recorded in errs and
// the others still run.
func measureVM(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *vmResults {
	r := &vmResults{RestoreMemory: cfg.Memory[0], NativeBinDir: cfg.NativeBinDir}
	deadline := time.Now().Add(cfg.VMBudget)
	// over says whether the VM part's time is up; the first run of each
	// kind always happens.
	over := func(what string, i, n int) bool {
		if i == 0 || time.Now().Before(deadline) {
			return false
		}
		note := fmt.Sprintf("%s: %d of %d runs (the VM part's time budget, -vm-budget %s, ran out)", what, i, n, cfg.VMBudget)
		logger.Warn("time budget", "note", note)
		r.Notes = append(r.Notes, note)
		return true
	}
	fail := func(what string, err error) {
		logger.Error(what, "err", err)
		*errs = append(*errs, fmt.Sprintf("%s: %v", what, err))
	}
	img, err := readImageSize(cfg.ImageDir, cfg.HarnessDir)
	if err != nil {
		fail("image size", err)
		return r
	}
	r.Image = *img

	// Snapshots for the memory sizes asked for (cached by image key).
	for _, mem := range cfg.Memory {
		logger.Info("snapshot", "memory_mb", mem)
		res, err := vm.Snapshot(ctx, vm.SnapshotOptions{ImageDir: cfg.ImageDir, Memory: mem, HarnessDir: cfg.HarnessDir, Logger: logger})
		if err != nil {
			fail(fmt.Sprintf("snapshot %d MB", mem), err)
			continue
		}
		if !res.Cached {
			r.SnapshotsTaken = append(r.SnapshotsTaken, strconv.Itoa(mem))
		}
	}
	if r.States, err = readStates(cfg.ImageDir, img.Key); err != nil {
		fail("state sizes", err)
	}

	// Restores; the last one's VM stays open for the query comparison.
	var last *vm.VM
	for i := range cfg.Restores {
		if over("snapshot restores", i, cfg.Restores) {
			break
		}
		logger.Info("restore", "run", i+1, "of", cfg.Restores, "memory_mb", r.RestoreMemory)
		v, err := startAndQuery(ctx, logger, vm.Options{ImageDir: cfg.ImageDir, Memory: r.RestoreMemory, HarnessDir: cfg.HarnessDir, Logger: logger, ReadyTimeout: 2 * time.Minute})
		if err != nil {
			fail("restore", err)
			continue
		}
		t := v.Timings()
		r.Restore = append(r.Restore, float64(t.FirstQuery))
		r.RestoreEmulator = append(r.RestoreEmulator, float64(t.EmulatorStarted))
		if st, err := v.Stats(ctx); err == nil {
			if st.Blob != nil {
				r.RestoreBlob = append(r.RestoreBlob, float64(st.Blob.Bytes))
				r.RestoreFiles = append(r.RestoreFiles, float64(st.Blob.Files))
			}
			r.RestoreRSS = append(r.RestoreRSS, float64(st.NodeRSS))
		} else {
			fail("restore stats", err)
		}
		logger.Info("restored", "first_query_ms", t.FirstQuery, "emulator_ms", t.EmulatorStarted)
		if last != nil {
			closeVM(last, logger)
		}
		last = v
	}
	if last != nil {
		queryComparison(ctx, cfg, last, r, logger, fail, over)
		closeVM(last, logger)
	}

	for i := range cfg.Boots {
		if over("full boots", i, cfg.Boots) {
			break
		}
		logger.Info("full boot", "run", i+1, "of", cfg.Boots)
		v, err := startAndQuery(ctx, logger, vm.Options{ImageDir: cfg.ImageDir, Memory: r.RestoreMemory, FullBoot: true, HarnessDir: cfg.HarnessDir, Logger: logger, ReadyTimeout: 4 * time.Minute})
		if err != nil {
			fail("full boot", err)
			continue
		}
		t := v.Timings()
		r.FullBoot = append(r.FullBoot, float64(t.FirstQuery))
		r.FullBootAgent = append(r.FullBootAgent, float64(t.AgentReady))
		if st, err := v.Stats(ctx); err == nil && st.Blob != nil {
			r.FullBootBlob = append(r.FullBootBlob, float64(st.Blob.Bytes))
			r.FullBootFiles = append(r.FullBootFiles, float64(st.Blob.Files))
		}
		logger.Info("booted", "first_query_ms", t.FirstQuery, "agent_ms", t.AgentReady)
		closeVM(v, logger)
	}
	return r
}

// startAndQuery starts a VM and runs `select 1`, the first query.
func startAndQuery(ctx context.Context, logger *slog.Logger, opts vm.Options) (*vm.VM, error) {
	v, err := vm.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := v.Query(qctx, "select 1"); err != nil {
		closeVM(v, logger)
		return nil, fmt.Errorf("first query: %w", err)
	}
	return v, nil
}

func closeVM(v *vm.VM, logger *slog.Logger) {
	if err := v.Close(); err != nil {
		logger.Warn("VM did not stop cleanly", "err", err)
	}
}

// queryComparison runs countQuery in the VM and on the host's PostgreSQL.
func queryComparison(ctx context.Context, cfg *Config, v *vm.VM, r *vmResults, logger *slog.Logger, fail func(string, error), over func(string, int, int) bool) {
	if res, err := v.Query(ctx, "select version()"); err == nil && len(res.Rows) == 1 && res.Rows[0][0] != nil {
		r.VMVersion = shortVersion(*res.Rows[0][0])
	}
	r.AgentChannel = v.AgentChannel()
	var err error
	if r.Channels, err = measureChannels(ctx, v, cfg.QueryRuns+2, 3); err != nil {
		fail("agent channels", err)
	}
	for range cfg.QueryRuns + 2 {
		t := time.Now()
		if _, err := v.Query(ctx, "select 1"); err != nil {
			fail("VM select 1", err)
			return
		}
		r.AgentRTT = append(r.AgentRTT, ms(time.Since(t)))
	}
	for i := range cfg.QueryRuns {
		if over("VM count query", i, cfg.QueryRuns) {
			break
		}
		qctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		t := time.Now()
		_, err := v.Query(qctx, countQuery)
		cancel()
		if err != nil {
			fail("VM count query", err)
			return
		}
		r.VMQuery = append(r.VMQuery, ms(time.Since(t)))
		logger.Info("VM count query", "run", i+1, "ms", r.VMQuery[len(r.VMQuery)-1])
	}

	pg, err := startNativePG(ctx, cfg.NativeBinDir, logger)
	if err != nil {
		fail("native PostgreSQL", err)
		return
	}
	defer pg.stop()
	conn, err := pg.connect(ctx)
	if err != nil {
		fail("native PostgreSQL", err)
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ver string
	if err := conn.QueryRow(ctx, "select version()").Scan(&ver); err == nil {
		r.NativeVersion = shortVersion(ver)
	}
	var n int64
	// One warm-up, as the VM session above is warm too.
	if err := conn.QueryRow(ctx, countQuery).Scan(&n); err != nil {
		fail("native count query", err)
		return
	}
	for range max(cfg.QueryRuns, 5) {
		t := time.Now()
		if err := conn.QueryRow(ctx, countQuery).Scan(&n); err != nil {
			fail("native count query", err)
			return
		}
		r.NativeQuery = append(r.NativeQuery, ms(time.Since(t)))
	}
}

// mbQuery returns about 1 MB of rows: 10,000 of 100 bytes.
const mbQuery = "select repeat('x', 100) from generate_series(1, 10000)"

// channelResult is one agent channel's cost, measured in the same VM as the
// others.
type channelResult struct {
	Channel   string
	Ping      Sample // ms for the agent's ping: the channel and the agent, without PostgreSQL
	SelectOne Sample // ms for `select 1`
	MB        Sample // ms for mbQuery's result
}

// measureChannels times ping and `select 1` (selects times each) and
// mbQuery (mbRuns times) on every agent channel the VM's image offers, in turns, so load
// on the host hits every channel alike.
func measureChannels(ctx context.Context, v *vm.VM, selects, mbRuns int) ([]channelResult, error) {
	var out []channelResult
	for _, ch := range v.Image().AgentChannels() {
		out = append(out, channelResult{Channel: ch})
	}
	timed := func(ch, sql string) (float64, error) {
		req := map[string]any{"op": "query", "sql": sql}
		if sql == "" {
			req = map[string]any{"op": "ping"}
		}
		t := time.Now()
		raw, err := v.RequestOn(ctx, ch, req)
		d := ms(time.Since(t))
		if err != nil {
			return 0, fmt.Errorf("%v on %s: %w", req, ch, err)
		}
		// The answer must be whole for the time to count.
		var res vm.Result
		if err := json.Unmarshal(raw, &res); err != nil {
			return 0, fmt.Errorf("%v on %s: %w", req, ch, err)
		}
		return d, nil
	}
	for range selects {
		for i := range out {
			d, err := timed(out[i].Channel, "")
			if err != nil {
				return out, err
			}
			out[i].Ping = append(out[i].Ping, d)
			if d, err = timed(out[i].Channel, "select 1"); err != nil {
				return out, err
			}
			out[i].SelectOne = append(out[i].SelectOne, d)
		}
	}
	for range mbRuns {
		for i := range out {
			d, err := timed(out[i].Channel, mbQuery)
			if err != nil {
				return out, err
			}
			out[i].MB = append(out[i].MB, d)
		}
	}
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

var versionRE = regexp.MustCompile(`^PostgreSQL (\S+).*? on ([^\s,]+)`)

// shortVersion turns version() into "17.11 (i686-pc-linux-gnu)".
func shortVersion(s string) string {
	if m := versionRE.FindStringSubmatch(s); m != nil {
		return m[1] + " (" + m[2] + ")"
	}
	return s
}

// readImageSize sums the image's files as a browser would fetch them.
func readImageSize(dir, harnessDir string) (*imageSize, error) {
	m, err := manifest.Read(dir)
	if err != nil {
		return nil, err
	}
	s := &imageSize{Key: m.Key, Postgres: m.PostgresVersion, FSBytes: m.FS.Bytes, Files: m.FS.Files}
	size := func(name string) (int64, error) {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return 0, fmt.Errorf("image file: %w", err)
		}
		return st.Size(), nil
	}
	var bios, vga int64
	for _, f := range []struct {
		dst  *int64
		name string
	}{{&s.Kernel, m.Kernel.File}, {&s.Initrd, m.Initrd.File}, {&bios, m.BIOS.File}, {&vga, m.VGABIOS.File}, {&s.FSJSON, m.FS.File}} {
		if *f.dst, err = size(f.name); err != nil {
			return nil, err
		}
	}
	s.BIOS = bios + vga
	err = filepath.WalkDir(filepath.Join(dir, m.FS.BlobDir), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		s.BlobBytes += info.Size()
		s.Blobs++
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot sum the 9p blobs: %w", err)
	}
	if h, err := vm.FindHarness(harnessDir); err == nil {
		for _, name := range []string{"v86.wasm", "libv86.mjs"} {
			if st, err := os.Stat(filepath.Join(h, "node_modules", "v86", "build", name)); err == nil {
				s.V86Runtime += st.Size()
			}
		}
	}
	return s, nil
}

// readStates lists the snapshots of this image in dir.
func readStates(dir, key string) ([]stateInfo, error) {
	var out []stateInfo
	for _, mem := range manifest.MemorySizes() {
		statePath := manifest.StatePath(dir, mem)
		meta, err := manifest.ReadState(statePath)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return out, err
		}
		if meta.ImageKey != key {
			continue // a stale state of another image
		}
		st, err := os.Stat(statePath)
		if err != nil {
			return out, fmt.Errorf("state file: %w", err)
		}
		out = append(out, stateInfo{MemoryMB: mem, Size: st.Size(), RawSize: meta.RawSize})
	}
	slices.SortFunc(out, func(a, b stateInfo) int { return a.MemoryMB - b.MemoryMB })
	return out, nil
}
