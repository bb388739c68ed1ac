// Package kernelbuild builds the guest kernel from Debian's kernel source
// package (linux-source-6.1, arch all, from the image's own archive and
// lock) with a configuration fragment kept in the repository
// (guest/kernel/pgwasm.config), for exactly the machine v86 emulates.
//
// The steps:
//
//  1. the source package's tarball (the Debian-patched tree) is unpacked
//     from the .deb with the host's tar and xz;
//  2. `make ARCH=i386 allnoconfig` with KCONFIG_ALLCONFIG=<fragment> makes
//     the configuration: everything off but what the fragment turns on (and
//     what that selects), and CheckConfig verifies that every option of the
//     fragment came out as asked;
//  3. `make ARCH=i386 CROSS_COMPILE=i686-linux-gnu- bzImage` builds it with
//     the host's make and Debian's i686 cross compiler (the kernel's own
//     host tools, kconfig and the like, are host programs); the build's
//     identity strings (KBUILD_BUILD_TIMESTAMP, _USER, _HOST, _VERSION) are
//     fixed, so the same inputs give the same bzImage;
//  4. bzImage and the final .config are kept under CacheDir/kernelbuild,
//     keyed by the source package, the fragment, the cross compiler and the
//     host compiler, and checked against their checksums before reuse;
//  5. the build tree itself is kept too (tree-<key>, keyed like the result
//     but without the fragment), so the next fragment rebuilds only what its
//     changed options touch (kbuild tracks each object's options): minutes
//     instead of the 10-60 of a whole compile on 2 cores.
//
// No i386 program runs on the build machine: every program goes through
// hostexec, and make's PATH holds the caller's host directories only.
package kernelbuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/extbuild"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// Version changes whenever the build steps change in a way that changes the
// output; it is part of the cache key.
const Version = "1"

// Identity strings the kernel embeds (uname -v, /proc/version): fixed, so
// the output does not depend on when and where it was built.
const (
	buildTimestamp = "2025-01-01 00:00:00 UTC" // the image's sourceDateEpoch
	buildUser      = "pgwasm"
	buildHost      = "pgwasm"
)

// Config says where results are kept and how many jobs make may run.
type Config struct {
	CacheDir string // results under CacheDir/kernelbuild
	Jobs     int    // make -j; 0 means the number of CPUs
	Logger   *slog.Logger
}

// Result is one built kernel.
type Result struct {
	BzImage string `json:"-"` // path in the cache
	Config  string `json:"-"` // the final .config, path in the cache
	// Source is the source package, Key the hash of every input.
	Source deb.Package `json:"source"`
	Key    string      `json:"key"`
	// BzImageSHA256 and ConfigSHA256 let a cached result be checked.
	BzImageSHA256 string                  `json:"bzimage_sha256"`
	ConfigSHA256  string                  `json:"config_sha256"`
	Compiler      *extbuild.CrossCompiler `json:"compiler"`
	HostCompiler  string                  `json:"host_compiler"`
	// BuildSeconds is how long the compile took when it ran (not on a
	// cache hit): the figure docs/vm.md reports.
	BuildSeconds float64 `json:"build_seconds"`
	// Incremental says the compile started from the tree of an earlier
	// build (another fragment), so BuildSeconds is not a whole compile.
	Incremental bool `json:"incremental"`
	CacheHit    bool `json:"-"`
}

// Build returns the kernel built from src (a downloaded linux-source .deb)
// with the fragment, from the cache when it was built before.
func Build(ctx context.Context, cfg Config, src deb.Package, fragment []byte) (*Result, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("source", src.Name+" "+src.Version)
	opts, err := ParseFragment(fragment)
	if err != nil {
		return nil, fmt.Errorf("kernel configuration fragment: %w", err)
	}
	cc, err := extbuild.FindCrossCompiler(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot build the kernel: %w", err)
	}
	hostCC, err := hostCompiler(ctx)
	if err != nil {
		return nil, err
	}
	key := Key(src, fragment, cc, hostCC)
	cache, err := filepath.Abs(filepath.Join(cfg.CacheDir, "kernelbuild"))
	if err != nil {
		return nil, fmt.Errorf("cannot find the cache directory: %w", err)
	}
	out := filepath.Join(cache, src.Version+"-"+key[:16])
	if res, err := readResult(out, key); err == nil {
		log.Info("kernel is up to date", "key", key[:12])
		res.CacheHit = true
		return res, nil
	}
	start := time.Now()
	work, tree, reused, err := prepareTree(ctx, cache, src, TreeKey(src, cc, hostCC))
	if err != nil {
		return nil, err
	}
	if reused {
		log.Info("reusing the kernel build tree", "tree", work)
	} else {
		log.Info("kernel source unpacked", "took", time.Since(start).Round(time.Second))
	}
	// The mark stays when the build was interrupted: a compiler killed
	// mid-write can leave an object kbuild would take for done, so the next
	// build starts from a fresh tree. make's own failures leave the tree
	// consistent (kbuild deletes the targets of failed commands).
	mark := filepath.Join(work, unfinishedMark)
	defer func() {
		if ctx.Err() == nil {
			os.Remove(mark)
		}
	}()
	b := &builder{tree: tree, work: work, cc: cc, jobs: cfg.Jobs}
	if b.jobs <= 0 {
		b.jobs = runtime.NumCPU()
	}
	if err := b.configure(ctx, fragment, opts); err != nil {
		return nil, err
	}
	log.Info("compiling the kernel", "jobs", b.jobs, "compiler", cc.Ident, "incremental", reused)
	compileStart := time.Now()
	if err := b.make(ctx, "bzImage", "-j"+strconv.Itoa(b.jobs)); err != nil {
		return nil, err
	}
	res := &Result{Source: src, Key: key, Compiler: cc, HostCompiler: hostCC, BuildSeconds: time.Since(compileStart).Seconds(), Incremental: reused}
	if err := store(tree, out, res); err != nil {
		return nil, err
	}
	log.Info("kernel built", "key", key[:12], "bzimage_bytes", fileSize(res.BzImage), "compile", time.Since(compileStart).Round(time.Second), "took", time.Since(start).Round(time.Second))
	return res, nil
}

// Key hashes every input of a kernel build.
func Key(src deb.Package, fragment []byte, cc *extbuild.CrossCompiler, hostCC string) string {
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		Version  string
		Source   [3]string // name, version, index SHA256
		Fragment [32]byte
		Compiler *extbuild.CrossCompiler
		HostCC   string
		Identity [3]string
	}{Version, [3]string{src.Name, src.Version, src.SHA256}, sha256.Sum256(fragment), cc, hostCC, [3]string{buildTimestamp, buildUser, buildHost}})
	return hex.EncodeToString(h.Sum(nil))
}

// TreeKey hashes what a build tree depends on: Key's inputs but the
// fragment, which kbuild itself follows from one build to the next.
func TreeKey(src deb.Package, cc *extbuild.CrossCompiler, hostCC string) string {
	return Key(src, nil, cc, hostCC)
}

// unfinishedMark, in a tree's directory, says a build is running there or
// was interrupted.
const unfinishedMark = "unfinished"

// prepareTree returns the kept build tree for treeKey under cache (its
// directory and the source tree in it), unpacking src afresh when there is
// none or the last build in it was interrupted, and marks it unfinished.
// Trees of other keys (an older source, another compiler) are removed: one
// unpacked source is about 1.3 GB.
func prepareTree(ctx context.Context, cache string, src deb.Package, treeKey string) (work, tree string, reused bool, err error) {
	work = filepath.Join(cache, "tree-"+treeKey[:16])
	old, _ := filepath.Glob(filepath.Join(cache, "tree-*"))
	legacy, _ := filepath.Glob(filepath.Join(cache, "work-*")) // left by interrupted builds before trees were kept
	for _, dir := range append(old, legacy...) {
		if dir != work {
			if err := os.RemoveAll(dir); err != nil {
				return "", "", false, fmt.Errorf("cannot remove an old kernel build tree: %w", err)
			}
		}
	}
	mark := filepath.Join(work, unfinishedMark)
	trees, _ := filepath.Glob(filepath.Join(work, "linux-source-*", "Makefile"))
	if _, err := os.Stat(mark); errors.Is(err, fs.ErrNotExist) && len(trees) == 1 {
		if err := os.WriteFile(mark, nil, 0o644); err != nil {
			return "", "", false, fmt.Errorf("cannot mark the kernel build tree: %w", err)
		}
		return work, filepath.Dir(trees[0]), true, nil
	}
	if src.Path == "" {
		return "", "", false, fmt.Errorf("cannot build the kernel: %s is not downloaded", src.Name)
	}
	if err := os.RemoveAll(work); err != nil {
		return "", "", false, fmt.Errorf("cannot clear the kernel build directory: %w", err)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", "", false, fmt.Errorf("cannot create the kernel build directory: %w", err)
	}
	if err := os.WriteFile(mark, nil, 0o644); err != nil {
		return "", "", false, fmt.Errorf("cannot mark the kernel build tree: %w", err)
	}
	tree, err = unpackSource(ctx, src, work)
	return work, tree, false, err
}

// hostCompiler is the first line of the host gcc's --version: it builds the
// kernel's host tools, and the key should change with it.
func hostCompiler(ctx context.Context) (string, error) {
	cmd, err := hostexec.Command(ctx, "gcc", "--version")
	if err != nil {
		return "", fmt.Errorf("cannot build the kernel: the host's gcc (for the kernel's build tools) is missing: %w", err)
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("cannot build the kernel: gcc --version: %w", err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line, nil
}

// unpackSource unpacks the source tarball the linux-source .deb carries
// (usr/src/linux-source-<x.y>.tar.xz) into work and returns the tree.
func unpackSource(ctx context.Context, src deb.Package, work string) (string, error) {
	pkg := filepath.Join(work, "pkg")
	if err := deb.Unpack(ctx, src.Path, pkg, nil); err != nil {
		return "", fmt.Errorf("cannot unpack %s: %w", src.Name, err)
	}
	tarballs, _ := filepath.Glob(filepath.Join(pkg, "usr/src/linux-source-*.tar.xz"))
	if len(tarballs) != 1 {
		return "", fmt.Errorf("%s %s: want one usr/src/linux-source-*.tar.xz, found %d", src.Name, src.Version, len(tarballs))
	}
	cmd, err := hostexec.Command(ctx, "tar", "-xJf", tarballs[0], "-C", work)
	if err != nil {
		return "", fmt.Errorf("cannot unpack the kernel source: %w", err)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cannot unpack the kernel source (tar and xz-utils, which make setup installs): %w: %s", err, rootfs.Tail(out, 5))
	}
	if err := os.RemoveAll(pkg); err != nil {
		return "", err
	}
	tree := strings.TrimSuffix(tarballs[0], ".tar.xz")
	tree = filepath.Join(work, filepath.Base(tree))
	if _, err := os.Stat(filepath.Join(tree, "Makefile")); err != nil {
		return "", fmt.Errorf("the kernel source tarball did not unpack to %s: %w", filepath.Base(tree), err)
	}
	return tree, nil
}

// builder runs the kernel's make in one source tree.
type builder struct {
	tree, work string
	cc         *extbuild.CrossCompiler
	jobs       int
}

// configure writes .config: allnoconfig with the fragment, then checks
// that every option of the fragment is in it as asked.
func (b *builder) configure(ctx context.Context, fragment []byte, opts []Option) error {
	frag := filepath.Join(b.work, "pgwasm.config")
	if err := os.WriteFile(frag, fragment, 0o644); err != nil {
		return fmt.Errorf("cannot write the kernel configuration fragment: %w", err)
	}
	if err := b.make(ctx, "allnoconfig", "KCONFIG_ALLCONFIG="+frag); err != nil {
		return err
	}
	dot, err := os.ReadFile(filepath.Join(b.tree, ".config"))
	if err != nil {
		return fmt.Errorf("kernel configuration: %w", err)
	}
	return CheckConfig(opts, dot)
}

// make runs the kernel's make for i386 with the cross compiler. The
// environment is built from nothing, so CC, CFLAGS, ARCH or MAKEFLAGS of the
// caller's cannot leak in.
func (b *builder) make(ctx context.Context, target string, args ...string) error {
	crossPrefix := strings.TrimSuffix(b.cc.CC, "gcc")
	full := append([]string{"ARCH=i386", "CROSS_COMPILE=" + crossPrefix, target}, args...)
	cmd, err := hostexec.Command(ctx, "make", full...)
	if err != nil {
		return fmt.Errorf("cannot build the kernel: %w", err)
	}
	tmp := filepath.Join(b.work, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	cmd.Dir = b.tree
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + b.work, "TMPDIR=" + tmp, "LC_ALL=C",
		"KBUILD_BUILD_TIMESTAMP=" + buildTimestamp, "KBUILD_BUILD_USER=" + buildUser,
		"KBUILD_BUILD_HOST=" + buildHost, "KBUILD_BUILD_VERSION=1",
	}
	logPath := filepath.Join(b.work, "make-"+target+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("cannot create the kernel build log: %w", err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		return fmt.Errorf("cannot build the kernel: make %s failed (%w); the log ends:\n%s", target, err, rootfs.Tail(out, 25))
	}
	return nil
}

// store copies bzImage and .config out of the tree into out, with
// result.json last, under a temporary name renamed into place.
func store(tree, out string, res *Result) error {
	tmp := out + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("cannot create the kernel cache entry: %w", err)
	}
	for _, f := range []struct {
		from, to string
		sum      *string
	}{{"arch/x86/boot/bzImage", "bzImage", &res.BzImageSHA256}, {".config", "config", &res.ConfigSHA256}} {
		b, err := os.ReadFile(filepath.Join(tree, f.from))
		if err != nil {
			return fmt.Errorf("the kernel build left no %s: %w", f.from, err)
		}
		if err := os.WriteFile(filepath.Join(tmp, f.to), b, 0o644); err != nil {
			return fmt.Errorf("cannot write the kernel cache entry: %w", err)
		}
		s := sha256.Sum256(b)
		*f.sum = hex.EncodeToString(s[:])
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "result.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write the kernel cache entry: %w", err)
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("cannot move the kernel cache entry into place: %w", err)
	}
	res.BzImage, res.Config = filepath.Join(out, "bzImage"), filepath.Join(out, "config")
	return nil
}

// readResult returns the cached result in dir when it has the key and its
// files match their checksums.
func readResult(dir, key string) (*Result, error) {
	b, err := os.ReadFile(filepath.Join(dir, "result.json"))
	if err != nil {
		return nil, err
	}
	var res Result
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("damaged kernel cache entry %s: %w", dir, err)
	}
	if res.Key != key {
		return nil, errors.New("kernel cache entry has another key")
	}
	res.BzImage, res.Config = filepath.Join(dir, "bzImage"), filepath.Join(dir, "config")
	for path, want := range map[string]string{res.BzImage: res.BzImageSHA256, res.Config: res.ConfigSHA256} {
		if got, _, err := rootfs.HashFile(path); err != nil || got != want {
			return nil, fmt.Errorf("kernel cache entry %s is damaged", dir)
		}
	}
	return &res, nil
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
