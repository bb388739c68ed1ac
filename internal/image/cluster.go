package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pgwasm/pgwasm/guest"
	"github.com/pgwasm/pgwasm/internal/image/ninep"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
	"github.com/pgwasm/pgwasm/internal/pgconf"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// The VM step: the build boots the image it is making once, in v86, and runs
// there what needs the image's own i386 programs (initdb and its warm-up,
// busybox's applet list). Run on the host they would need IA32 emulation
// (absent on many amd64 kernels, and on every arm64 one) and root for a
// chroot; in v86 they need neither, and they run on the same emulated CPU
// and kernel as in the browser.
const (
	// buildStage holds, in the root, what the VM step needs and the image
	// must not keep: guest/build-step as "run", initdb's arguments, the
	// configuration files. It is removed before the real 9p tree is written.
	buildStage = "usr/lib/pgwasm/build"
	// buildFlag on the kernel command line, with the staged script, makes
	// guest/init run the build step instead of booting the product.
	buildFlag = "pgwasm.build=1"
	// vmStepMemoryMB is the build VM's memory. The result does not depend
	// on it; it leaves the guest's page cache room for the PostgreSQL
	// binaries and catalog files, which come over 9p.
	vmStepMemoryMB = 256
	// vmStepTimeout bounds the whole VM step: 2-2.5 minutes on a 2-core
	// machine at load 3 (docs/image.md), and a busy build host is several
	// times slower (at load 15-18, the boot alone took 5 minutes and initdb
	// over 8). Progress is logged at every phase meanwhile.
	vmStepTimeout = 30 * time.Minute
	// postgresConfTail is appended to initdb's postgresql.conf.
	postgresConfTail = "\n# pgwasm: settings for the emulated machine, with reasons\ninclude = 'pgwasm.conf'\n"
)

// initdbArgs are initdb's arguments in the VM step. A variable so a test can
// make initdb fail.
var initdbArgs = func() []string {
	return append([]string{"-D", pgData, "--no-sync", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"}, pgconf.InitdbArgs()...)
}

// runInVM gives the root its busybox applet links and its PostgreSQL
// cluster without running any of the image's programs on the host: it boots
// the root in v86 (staged holds the kernel, initramfs and BIOS files) to run
// them there, takes the results out of v86's 9p file system, and records
// their owners and modes in meta (the host copies belong to whoever runs the
// build). The result is cached under the cache directory by key, which
// covers every input but the guest agent, so a build that changes only the
// agent does not boot. Nothing is added to root unless the step succeeded.
func runInVM(ctx context.Context, cfg Config, root, staged, key string, meta rootfs.Metas) error {
	log := cfg.Logger
	if len(key) < 16 {
		return fmt.Errorf("VM step: bad cache key %q", key)
	}
	// Without one the kernel boots with no console: nothing to wait for but
	// the step's timeout.
	if cfg.Cmdline == "" {
		return errors.New("VM step: no kernel command line (checkKernel fills in the kernel kind's)")
	}
	entry := filepath.Join(cfg.CacheDir, "vmstep", key[:16])
	inputs, err := vmStepInputs(cfg)
	if err != nil {
		return err
	}
	l, err := loadVMStep(entry, key, inputs)
	switch {
	case err == nil:
		log.Info("VM step: reusing the cached cluster and applet list", "dir", entry)
	case errors.Is(err, fs.ErrNotExist):
		l = nil
	default:
		log.Warn("VM step: the cached result is damaged or stale, running the step again", "dir", entry, "err", err)
		if err := os.RemoveAll(entry); err != nil {
			return fmt.Errorf("cannot remove the damaged VM step cache %s: %w", entry, err)
		}
		l = nil
	}
	if l == nil {
		if l, err = buildVMStep(ctx, cfg, root, staged, entry, key, inputs, meta); err != nil {
			return err
		}
	}
	return installVMStep(root, entry, l, meta)
}

// vmStepInputs hashes what the VM step reads besides what key covers: the
// build script and the files staged for it. A cache entry made from other
// ones is not reused (key should cover them already; this keeps a stale
// entry from hiding a change to them).
func vmStepInputs(cfg Config) (string, error) {
	files, err := stagedFiles(cfg)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s %o %d\n", f.path, f.mode, len(f.data))
		h.Write(f.data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type stagedFile struct {
	path string // relative to root
	data []byte
	mode os.FileMode
}

// stagedFiles are what the VM step puts under buildStage for the guest.
func stagedFiles(cfg Config) ([]stagedFile, error) {
	seed := sha256.Sum256([]byte(cfg.Cmdline + BuilderVersion))
	cert, key, err := pgconf.Cert(seed[:], []string{"localhost", "pgwasm"})
	if err != nil {
		return nil, err
	}
	args := initdbArgs()
	for _, a := range args {
		if strings.ContainsAny(a, "\n\x00") {
			return nil, fmt.Errorf("initdb argument %q: no newlines", a)
		}
	}
	conf := buildStage + "/conf/"
	return []stagedFile{
		{buildStage + "/run", guest.BuildStep, 0o755},
		{buildStage + "/initdb-args", []byte(strings.Join(args, "\n") + "\n"), 0o644},
		{conf + "pgwasm.conf", []byte(pgconf.ConfFile()), 0o600},
		{conf + "pg_hba.conf", []byte(pgconf.HBA()), 0o600},
		{conf + "server.crt", cert, 0o600},
		{conf + "server.key", key, 0o600},
		{conf + "postgresql.conf.tail", []byte(postgresConfTail), 0o600},
	}, nil
}

// buildVMStep boots the root in v86 and makes the cache entry from what the
// guest left in the 9p tree.
func buildVMStep(ctx context.Context, cfg Config, root, staged, entry, key, inputs string, meta rootfs.Metas) (*vmListing, error) {
	log := cfg.Logger
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, vmStepTimeout)
	defer cancel()

	work := filepath.Join(filepath.Dir(staged), "vmstep")
	if err := os.RemoveAll(work); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	undo, err := stageVMStep(cfg, root)
	defer undo()
	if err != nil {
		return nil, err
	}
	// Uncompressed: v86 reads it once, and zstd at the image's level would
	// cost more than the boot.
	tree := filepath.Join(work, "9p")
	log.Info("VM step: writing a 9p tree of the root to boot", "dir", tree)
	if _, err := ninep.Write(ctx, root, tree, ninep.Options{MTime: sourceDateEpoch, ZstdLevel: -1, Meta: meta}); err != nil {
		return nil, fmt.Errorf("VM step: cannot write the 9p tree: %w", err)
	}
	tTree := time.Since(t0)

	// A name of its own: another build of the same inputs may be running.
	if err := os.MkdirAll(filepath.Dir(entry), 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the VM step cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(entry), filepath.Base(entry)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("cannot create the VM step cache: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			os.RemoveAll(tmp)
		}
	}()

	l, timings, err := vmStepBoot(ctx, cfg, staged, tree, tmp, work)
	if err != nil {
		return nil, err
	}
	l.Key, l.Inputs = key, inputs
	if err := commitVMStep(tmp, entry, l); err != nil {
		return nil, err
	}
	committed = true
	log.Info("VM step done", "tree", tTree.Round(time.Millisecond), "boot", timings.boot.Round(time.Second),
		"initdb_and_warmup", timings.steps.Round(time.Second), "export", timings.export.Round(time.Millisecond),
		"total", time.Since(t0).Round(time.Second), "files", len(l.Entries))
	return l, nil
}

// stageVMStep puts what the guest needs into root: the staged files and
// /usr/bin/sh (guest/init is a shell script; the applet links come later).
// undo removes all of it again and must be called even on error.
func stageVMStep(cfg Config, root string) (undo func(), err error) {
	var created []string
	undo = func() {
		for i := len(created) - 1; i >= 0; i-- {
			os.RemoveAll(created[i])
		}
	}
	stage := filepath.Join(root, buildStage)
	if _, err := os.Lstat(stage); err == nil {
		return undo, fmt.Errorf("VM step: %s is already in the root", buildStage)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/bin/busybox")); err != nil {
		return undo, fmt.Errorf("VM step: busybox-static is missing from the root: %w", err)
	}
	sh := filepath.Join(root, "usr/bin/sh")
	if _, err := os.Lstat(sh); errors.Is(err, fs.ErrNotExist) {
		if err := os.Symlink("/usr/bin/busybox", sh); err != nil {
			return undo, err
		}
		created = append(created, sh)
	}
	created = append(created, stage)
	files, err := stagedFiles(cfg)
	if err != nil {
		return undo, err
	}
	for _, f := range files {
		if err := writeFile(filepath.Join(root, f.path), f.data, f.mode); err != nil {
			return undo, err
		}
	}
	return undo, nil
}

type vmStepTimings struct{ boot, steps, export time.Duration }

// vmStepBootTimeout bounds the boot up to the build script's first line
// (12-26 s measured), so a guest that never gets there fails in minutes,
// not at vmStepTimeout.
const vmStepBootTimeout = 5 * time.Minute

// vmStepFatal are console lines after which the build step cannot finish.
var vmStepFatal = []string{
	"Kernel panic",
	"initramfs: cannot mount the 9p root", // guest/initramfs-init
	"but this is no build boot",           // guest/init did not run the step
}

// vmStepBoot is bootVMStep; tests replace it to test the cache without v86.
var vmStepBoot = bootVMStep

// bootVMStep boots the tree, follows guest/build-step on the console and,
// once it says ok, exports the data directory into entryTmp/data and reads
// the applet list.
func bootVMStep(ctx context.Context, cfg Config, staged, tree, entryTmp, work string) (*vmListing, vmStepTimings, error) {
	log := cfg.Logger
	var tm vmStepTimings
	t0 := time.Now()
	var (
		mu      sync.Mutex
		phase   = "boot"
		phaseT  = t0
		logTail []string
		done    = make(chan string, 1) // "ok", "FAILED: <step>" or "fatal: <line>"
	)
	finish := func(s string) {
		select {
		case done <- s:
		default:
		}
	}
	started := make(chan struct{})
	onConsole := func(line string) {
		line = strings.TrimRight(line, "\r")
		for _, f := range vmStepFatal {
			if strings.Contains(line, f) {
				finish("fatal: " + line)
				return
			}
		}
		msg, ok := strings.CutPrefix(line, "pgwasm-build: ")
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasPrefix(msg, "log: "):
			logTail = append(logTail, strings.TrimPrefix(msg, "log: "))
		case msg == "ok" || strings.HasPrefix(msg, "FAILED"):
			if msg == "ok" {
				now := time.Now()
				log.Info("VM step: the guest is done", "previous", phase, "previous_took", now.Sub(phaseT).Round(time.Second), "elapsed", now.Sub(t0).Round(time.Second))
			}
			finish(msg)
		default:
			now := time.Now()
			log.Info("VM step: "+msg, "previous", phase, "previous_took", now.Sub(phaseT).Round(time.Second), "elapsed", now.Sub(t0).Round(time.Second))
			if msg == "started" && tm.boot == 0 {
				tm.boot = now.Sub(t0)
				close(started)
			}
			phase, phaseT = msg, now
		}
	}
	log.Info("VM step: booting the image in v86 to run initdb and its warm-up in it (1-5 minutes)")
	v, err := vm.Boot(ctx, vm.BootOptions{
		Files: vm.BootFiles{
			Kernel: filepath.Join(staged, "bzImage"), Initrd: filepath.Join(staged, "initrd.img"),
			BIOS: filepath.Join(staged, "bios.bin"), VGABIOS: filepath.Join(staged, "vgabios.bin"),
			FSJSON: filepath.Join(tree, ninep.IndexName), BlobDir: filepath.Join(tree, ninep.BlobDir),
			Cmdline: cfg.Cmdline + " " + buildFlag, NetDevice: cfg.NetDevice, ACPI: localAPIC(cfg.Kernel),
		},
		Memory:     vmStepMemoryMB,
		HarnessDir: cfg.HarnessDir,
		Logger:     log,
		OnConsole:  onConsole,
	})
	if err != nil {
		return nil, tm, fmt.Errorf("VM step: cannot boot the image: %w", err)
	}
	defer v.Close()

	var result string
	bootTimer := time.NewTimer(vmStepBootTimeout)
	defer bootTimer.Stop()
	select {
	case <-started:
	case result = <-done:
	case <-bootTimer.C:
		return nil, tm, fmt.Errorf("VM step: the guest did not reach the build step within %s; last console lines:\n%s", vmStepBootTimeout, v.ConsoleTail())
	case <-ctx.Done():
		return nil, tm, fmt.Errorf("VM step: the guest did not reach the build step: %w; last console lines:\n%s", ctx.Err(), v.ConsoleTail())
	}
	if result == "" {
		select {
		case result = <-done:
		case <-ctx.Done():
			mu.Lock()
			p := phase
			mu.Unlock()
			return nil, tm, fmt.Errorf("VM step: the guest did not finish within %s (at %q): %w; last console lines:\n%s", vmStepTimeout, p, ctx.Err(), v.ConsoleTail())
		}
	}
	mu.Lock()
	if tm.boot > 0 {
		tm.steps = time.Since(t0) - tm.boot
	}
	tail := strings.Join(logTail, "\n")
	mu.Unlock()
	switch {
	case strings.HasPrefix(result, "fatal: "):
		return nil, tm, fmt.Errorf("VM step: the guest failed (%s); last console lines:\n%s", strings.TrimPrefix(result, "fatal: "), v.ConsoleTail())
	case result != "ok":
		step := strings.TrimSpace(strings.TrimPrefix(result, "FAILED:"))
		if tail == "" {
			tail = v.ConsoleTail()
		}
		return nil, tm, fmt.Errorf("VM step: %s failed in the VM; guest log:\n%s", step, tail)
	}

	tx := time.Now()
	entries, err := v.ExportTree(ctx, pgData, filepath.Join(entryTmp, "data"))
	if err != nil {
		return nil, tm, fmt.Errorf("VM step: cannot copy the data directory out of the VM: %w", err)
	}
	out := filepath.Join(work, "out")
	if _, err := v.ExportTree(ctx, "/"+buildStage+"/out", out); err != nil {
		return nil, tm, fmt.Errorf("VM step: cannot copy the applet list out of the VM: %w", err)
	}
	tm.export = time.Since(tx)
	list, err := os.ReadFile(filepath.Join(out, "applets"))
	if err != nil {
		return nil, tm, fmt.Errorf("VM step: the guest wrote no applet list: %w", err)
	}
	l := &vmListing{Version: vmListingVersion, Applets: strings.Fields(string(list))}
	if len(l.Applets) == 0 {
		return nil, tm, errors.New("VM step: busybox listed no applets")
	}
	for _, e := range entries {
		l.Entries = append(l.Entries, vmEntry{Path: e.Path, Type: e.Type, Mode: e.Mode, UID: e.UID, GID: e.GID, Size: e.Size, Target: e.Target})
	}
	return l, tm, nil
}

// installVMStep copies the cached data directory into root (whole or not at
// all), records its owners and modes in meta and links busybox's applets.
func installVMStep(root, entry string, l *vmListing, meta rootfs.Metas) error {
	data := filepath.Join(root, pgData)
	if _, err := os.Lstat(data); err == nil {
		return fmt.Errorf("the root already has %s", pgData)
	}
	if err := os.MkdirAll(filepath.Dir(data), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "var/log/postgresql"), 0o755); err != nil {
		return err
	}
	tmp := data + ".tmp"
	os.RemoveAll(tmp)
	if err := copyVMTree(filepath.Join(entry, "data"), tmp, l.Entries); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("cannot copy the cached cluster into the root: %w", err)
	}
	if err := os.Rename(tmp, data); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	rel := strings.TrimPrefix(pgData, "/")
	for _, e := range l.Entries {
		p := rel
		if e.Path != "." {
			p = rel + "/" + e.Path
		}
		meta[p] = rootfs.Meta{UID: e.UID, GID: e.GID, Mode: rootfs.ModeFromUnix(e.Mode)}
	}
	// As guest/build-step leaves them.
	for _, d := range []string{"var/lib/postgresql", path.Dir(rel), "var/log/postgresql"} {
		meta[d] = rootfs.Meta{UID: postgresUID, GID: postgresUID, Mode: 0o755}
	}
	return linkApplets(root, l.Applets)
}

// copyVMTree copies the listed entries from src to dst as owner-writable
// files and directories (their real modes go into meta).
func copyVMTree(src, dst string, entries []vmEntry) error {
	for _, e := range entries {
		from, to := filepath.Join(src, filepath.FromSlash(e.Path)), filepath.Join(dst, filepath.FromSlash(e.Path))
		switch e.Type {
		case "dir":
			if err := os.Mkdir(to, 0o755); err != nil {
				return err
			}
		case "file":
			b, err := os.ReadFile(from)
			if err != nil {
				return err
			}
			if err := os.WriteFile(to, b, 0o644); err != nil {
				return err
			}
		case "symlink":
			if err := os.Symlink(e.Target, to); err != nil {
				return err
			}
		}
	}
	return nil
}

// linkApplets links every busybox applet that no package provides, from
// `busybox --list-full` (paths like "bin/ls" or "usr/sbin/chroot"; with
// merged /usr both land in /usr).
func linkApplets(root string, applets []string) error {
	for _, applet := range applets {
		dir, name := path.Split(applet)
		if name == "" || name == "." || name == ".." || strings.Contains(applet, "..") || path.IsAbs(applet) {
			return fmt.Errorf("busybox applet %q: not a relative path", applet)
		}
		dir = strings.TrimPrefix(strings.TrimSuffix(dir, "/"), "usr/")
		target := filepath.Join(root, "usr", dir, name)
		if _, err := os.Lstat(target); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/usr/bin/busybox", target); err != nil {
			return fmt.Errorf("cannot link busybox applet %s: %w", applet, err)
		}
	}
	return nil
}
