package image

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

const testKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fakeVMStep stands in for the boot: it writes a small data directory the
// way the harness's export_tree does and counts its calls.
type fakeVMStep struct {
	calls int
	fail  error
}

func (f *fakeVMStep) boot(_ context.Context, _ Config, _, tree, entryTmp, _ string) (*vmListing, vmStepTimings, error) {
	f.calls++
	if _, err := os.Stat(filepath.Join(tree, "fs.json")); err != nil {
		return nil, vmStepTimings{}, err
	}
	if f.fail != nil {
		return nil, vmStepTimings{}, f.fail
	}
	data := filepath.Join(entryTmp, "data")
	for _, d := range []string{"", "base", "base/1", "pg_wal"} {
		if err := os.MkdirAll(filepath.Join(data, d), 0o755); err != nil {
			return nil, vmStepTimings{}, err
		}
	}
	files := map[string]string{"PG_VERSION": "17\n", "base/1/1259": strings.Repeat("x", 8192), "pg_wal/000000010000000000000001": strings.Repeat("w", 4096), "postgresql.conf": "include = 'pgwasm.conf'\n"}
	for name, c := range files {
		if err := os.WriteFile(filepath.Join(data, name), []byte(c), 0o644); err != nil {
			return nil, vmStepTimings{}, err
		}
	}
	if err := os.Symlink("PG_VERSION", filepath.Join(data, "version.link")); err != nil {
		return nil, vmStepTimings{}, err
	}
	l := &vmListing{Version: vmListingVersion, Applets: []string{"bin/sh", "bin/ls", "usr/sbin/chroot", "sbin/ip"}}
	l.Entries = []vmEntry{
		{Path: ".", Type: "dir", Mode: 0o700, UID: 999, GID: 999},
		{Path: "PG_VERSION", Type: "file", Mode: 0o600, UID: 999, GID: 999, Size: 3},
		{Path: "base", Type: "dir", Mode: 0o700, UID: 999, GID: 999},
		{Path: "base/1", Type: "dir", Mode: 0o700, UID: 999, GID: 999},
		{Path: "base/1/1259", Type: "file", Mode: 0o600, UID: 999, GID: 999, Size: 8192},
		{Path: "pg_wal", Type: "dir", Mode: 0o2700, UID: 999, GID: 999},
		{Path: "pg_wal/000000010000000000000001", Type: "file", Mode: 0o600, UID: 999, GID: 999, Size: 4096},
		{Path: "postgresql.conf", Type: "file", Mode: 0o600, UID: 999, GID: 999, Size: int64(len(files["postgresql.conf"]))},
		{Path: "version.link", Type: "symlink", Mode: 0o777, UID: 999, GID: 999, Target: "PG_VERSION"},
	}
	return l, vmStepTimings{}, nil
}

func useFake(t *testing.T, f *fakeVMStep) {
	old := vmStepBoot
	vmStepBoot = f.boot
	t.Cleanup(func() { vmStepBoot = old })
}

// testRoot is a root as assemble hands it to runInVM: busybox, no applet
// links, no cluster.
func testRoot(t *testing.T) (cfg Config, root, staged string) {
	t.Helper()
	work := t.TempDir()
	root = filepath.Join(work, "root")
	staged = filepath.Join(work, "image")
	for _, d := range []string{"usr/bin", "usr/sbin", "var/lib/postgresql", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/busybox"), []byte("busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/ls"), []byte("coreutils ls"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(staged, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg = DefaultConfig()
	cfg.CacheDir = filepath.Join(work, "cache")
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	// As Build does: the kernel's command line (console=ttyS0 above all)
	// is filled in from the kernel kind.
	if err := checkKernel(&cfg); err != nil {
		t.Fatal(err)
	}
	return cfg, root, staged
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func checkInstalled(t *testing.T, root string, meta rootfs.Metas) {
	t.Helper()
	data := filepath.Join(root, pgData)
	b, err := os.ReadFile(filepath.Join(data, "PG_VERSION"))
	if err != nil || string(b) != "17\n" {
		t.Fatalf("PG_VERSION in the root: %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(data, "version.link")); err != nil || target != "PG_VERSION" {
		t.Errorf("symlink in the data directory: %q, %v", target, err)
	}
	// Host copies are owner-writable whatever the guest's modes.
	if st, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("host mode of PG_VERSION: %v, %v", st.Mode(), err)
	}
	for p, want := range map[string]rootfs.Meta{
		"var/lib/postgresql/17/main":            {UID: 999, GID: 999, Mode: 0o700},
		"var/lib/postgresql/17/main/PG_VERSION": {UID: 999, GID: 999, Mode: 0o600},
		"var/lib/postgresql/17/main/pg_wal":     {UID: 999, GID: 999, Mode: 0o700 | fs.ModeSetgid},
		"var/lib/postgresql/17":                 {UID: 999, GID: 999, Mode: 0o755},
		"var/lib/postgresql":                    {UID: 999, GID: 999, Mode: 0o755},
		"var/log/postgresql":                    {UID: 999, GID: 999, Mode: 0o755},
	} {
		if got, ok := meta[p]; !ok || got != want {
			t.Errorf("meta[%s] = %+v (%v), want %+v", p, got, ok, want)
		}
	}
	for _, p := range []string{"usr/bin/sh", "usr/sbin/chroot", "usr/sbin/ip"} {
		if target, err := os.Readlink(filepath.Join(root, p)); err != nil || target != "/usr/bin/busybox" {
			t.Errorf("applet link %s: %q, %v", p, target, err)
		}
	}
	// A package's own program wins over the applet.
	if _, err := os.Readlink(filepath.Join(root, "usr/bin/ls")); err == nil {
		t.Error("usr/bin/ls was replaced by an applet link")
	}
	if _, err := os.Lstat(filepath.Join(root, buildStage)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the build stage is left in the root: %v", err)
	}
}

func TestVMStepCached(t *testing.T) {
	fake := &fakeVMStep{}
	useFake(t, fake)
	ctx := context.Background()

	cfg, root, staged := testRoot(t)
	m := rootfs.Metas{}
	if err := runInVM(ctx, cfg, root, staged, testKey, m); err != nil {
		t.Fatal(err)
	}
	if fake.calls != 1 {
		t.Fatalf("boots: %d, want 1", fake.calls)
	}
	checkInstalled(t, root, m)
	entry := filepath.Join(cfg.CacheDir, "vmstep", testKey[:16])
	if _, err := os.Stat(filepath.Join(entry, vmListingSumName)); err != nil {
		t.Fatalf("no cache entry: %v", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(cfg.CacheDir, "vmstep", "*.tmp*")); len(leftovers) > 0 {
		t.Errorf("temporary cache entries left: %v", leftovers)
	}

	// A second build with the same key (only the agent changed) boots no VM.
	cfg2, root2, staged2 := testRoot(t)
	cfg2.CacheDir = cfg.CacheDir
	m2 := rootfs.Metas{}
	if err := runInVM(ctx, cfg2, root2, staged2, testKey, m2); err != nil {
		t.Fatal(err)
	}
	if fake.calls != 1 {
		t.Fatalf("boots: %d, want 1 (the cache was not used)", fake.calls)
	}
	checkInstalled(t, root2, m2)
}

// TestVMStepDamagedEntry damages a cache entry in every way a half-written
// or corrupted one could be and checks that each is refused on load and
// rebuilt by runInVM.
func TestVMStepDamagedEntry(t *testing.T) {
	fake := &fakeVMStep{}
	useFake(t, fake)
	ctx := context.Background()
	cfg, root, staged := testRoot(t)
	if err := runInVM(ctx, cfg, root, staged, testKey, rootfs.Metas{}); err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(cfg.CacheDir, "vmstep", testKey[:16])
	inputs, err := vmStepInputs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadVMStep(entry, testKey, inputs); err != nil {
		t.Fatalf("fresh entry: %v", err)
	}
	if _, err := loadVMStep(entry+"x", testKey, inputs); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing entry: %v, want ErrNotExist", err)
	}
	data := filepath.Join(entry, "data")
	damages := map[string]func() error{
		"truncated file": func() error { return os.Truncate(filepath.Join(data, "base/1/1259"), 100) },
		"changed byte": func() error {
			return os.WriteFile(filepath.Join(data, "base/1/1259"), []byte(strings.Repeat("x", 8191)+"y"), 0o644)
		},
		"missing file":      func() error { return os.Remove(filepath.Join(data, "pg_wal/000000010000000000000001")) },
		"missing directory": func() error { return os.RemoveAll(filepath.Join(data, "base")) },
		"extra file":        func() error { return os.WriteFile(filepath.Join(data, "postmaster.pid"), nil, 0o644) },
		"changed symlink": func() error {
			os.Remove(filepath.Join(data, "version.link"))
			return os.Symlink("elsewhere", filepath.Join(data, "version.link"))
		},
		"edited listing": func() error {
			p := filepath.Join(entry, vmListingName)
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(p, []byte(strings.Replace(string(b), `"mode": 384`, `"mode": 420`, 1)), 0o644)
		},
		"truncated listing": func() error { return os.Truncate(filepath.Join(entry, vmListingName), 200) },
		"no checksum":       func() error { return os.Remove(filepath.Join(entry, vmListingSumName)) },
		"no data":           func() error { return os.RemoveAll(data) },
	}
	for name, damage := range damages {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			if err := damage(); err != nil {
				t.Fatal(err)
			}
			_, err := loadVMStep(entry, testKey, inputs)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("damaged entry loads: %v", err)
			}
			t.Logf("refused: %v", err)
			calls := fake.calls
			cfg2, root2, staged2 := testRoot(t)
			cfg2.CacheDir = cfg.CacheDir
			m := rootfs.Metas{}
			if err := runInVM(ctx, cfg2, root2, staged2, testKey, m); err != nil {
				t.Fatal(err)
			}
			if fake.calls != calls+1 {
				t.Fatalf("the damaged entry was not rebuilt")
			}
			checkInstalled(t, root2, m)
			if _, err := loadVMStep(entry, testKey, inputs); err != nil {
				t.Fatalf("rebuilt entry: %v", err)
			}
		})
	}
	// An entry for other inputs (another key prefix collision, or another
	// build script) is not used either.
	if _, err := loadVMStep(entry, strings.Replace(testKey, "f", "e", 1), inputs); err == nil {
		t.Error("entry loads for another key")
	}
	if _, err := loadVMStep(entry, testKey, "other"); err == nil {
		t.Error("entry loads for other inputs")
	}
}

// TestVMStepFailure: a failed step leaves no cache entry and the root as it
// was (no data directory, no staging, no /usr/bin/sh).
func TestVMStepFailure(t *testing.T) {
	fake := &fakeVMStep{fail: errors.New("VM step: initdb failed in the VM")}
	useFake(t, fake)
	cfg, root, staged := testRoot(t)
	m := rootfs.Metas{}
	err := runInVM(context.Background(), cfg, root, staged, testKey, m)
	if err == nil || !strings.Contains(err.Error(), "initdb failed") {
		t.Fatalf("runInVM = %v, want the step's error", err)
	}
	checkUntouched(t, cfg, root, m)
}

func checkUntouched(t *testing.T, cfg Config, root string, m rootfs.Metas) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(cfg.CacheDir, "vmstep"))
	if len(entries) != 0 {
		t.Errorf("cache entries after a failure: %v", entries)
	}
	for _, p := range []string{pgData, "/var/lib/postgresql/17", buildStage, "usr/bin/sh", "var/log/postgresql"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is in the root after a failure: %v", p, err)
		}
	}
	if len(m) != 0 {
		t.Errorf("meta after a failure: %v", m)
	}
}
