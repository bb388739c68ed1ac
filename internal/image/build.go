// Package image builds the pgwasm VM image from Debian packages: a kernel, an
// initramfs that mounts a 9p root, and that root (PostgreSQL 17, busybox, the
// guest init and agent) as a v86 9p tree, plus manifest.json.
//
// The pipeline: resolve and download packages (deb), derive a cache key from
// everything that goes in, unpack and prune the root, configure it and run
// initdb, write the initramfs (cpio) and the 9p tree (ninep), and finally
// replace the output directory in one rename, so a failed build never leaves
// anything a later step could take for good output.
package image

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pgwasm/pgwasm/guest"
	"github.com/pgwasm/pgwasm/guest/kernel"
	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/extbuild"
	"github.com/pgwasm/pgwasm/internal/image/kernelbuild"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

// BuilderVersion changes whenever the build steps change in a way that
// changes the output, so old cached images are rebuilt.
const BuilderVersion = "3"

// Config says what to build and where.
type Config struct {
	Out       string // output directory, e.g. build/image
	CacheDir  string // downloads and build results, shared by checkouts (DefaultCacheDir)
	AgentPath string // the guest agent, a static linux/386 binary
	// Packages are installed with their dependencies; ExtraPackages are
	// added on top (e.g. postgresql-17-postgis-3).
	Packages      []string
	ExtraPackages []string
	// Extensions are built from their Debian source packages for i386
	// (extbuild): Debian builds postgresql-17-* extensions for 64-bit
	// architectures only. ExtraPackages that extbuild knows (e.g.
	// postgresql-17-pgvector) are built the same way.
	Extensions    []string
	KernelPackage string // a metapackage naming the kernel, e.g. linux-image-686
	// Kernel is which kernel the image boots: KernelDebian (KernelPackage,
	// with the modules the initramfs loads) or KernelSource (built from
	// KernelSourcePackage with guest/kernel/pgwasm.config, no modules).
	Kernel              string
	KernelSourcePackage string   // Debian's kernel source, e.g. linux-source-6.1
	Suites              []string // Debian suites searched, e.g. bookworm (kernel) and trixie (PostgreSQL 17)
	Mirror              string   // archive URI; empty reads it from the host's apt sources
	EtcApt              string   // where the host's apt sources are, normally /etc/apt
	Keyring             string   // the archive keyring
	Cmdline             string   // kernel command line; empty: DefaultCmdline(Kernel)
	NetDevice           string   // v86 NIC type the image is snapshotted with: ne2k or virtio
	HarnessDir          string   // the Node harness that boots the VM for initdb; found automatically when empty
	Force               bool     // rebuild even when the cache key matches
	// Lock is the package lock file's text (packages.lock, embedded):
	// every package resolves to exactly its version or the build fails.
	// Empty builds from whatever the archive offers (`image lock` does).
	Lock   []byte
	Logger *slog.Logger
}

// LockFile is the committed package lock (`make lock` rewrites it).
//
//go:embed packages.lock
var LockFile []byte

// LockPath is where `pgwasm image lock` writes the lock, relative to the
// repository's root.
const LockPath = "internal/image/packages.lock"

// DefaultConfig is the product's image.
func DefaultConfig() Config {
	return Config{
		Out:      "build/image",
		CacheDir: DefaultCacheDir(),
		Packages: []string{"postgresql-17", "postgresql-client-17", "busybox-static", "ncurses-base", "ca-certificates"},
		// Trixie has no i386 postgresql-17-pgvector; extbuild compiles
		// Debian's source package for i386 (see docs/image.md).
		Extensions:    []string{"postgresql-17-pgvector"},
		KernelPackage: "linux-image-686",
		// Our kernel (docs/vm.md, "Our kernel"): a smaller state and a
		// cheaper idle than Debian's (--kernel debian). Its source is
		// bookworm's package of the kernel linux-image-686 is built from
		// (the same Debian version), so the two kernels differ only in
		// their configuration.
		Kernel:              KernelSource,
		KernelSourcePackage: "linux-source-6.1",
		Suites:              []string{"bookworm", "trixie"},
		EtcApt:              "/etc/apt",
		Keyring:             "/usr/share/keyrings/debian-archive-keyring.gpg",
		Lock:                LockFile,
		NetDevice:           "virtio",
	}
}

// The kernels an image can boot (Config.Kernel, `image build --kernel`).
const (
	KernelDebian = "debian" // Debian's generic linux-image-686 and its modules
	KernelSource = "source" // built from linux-source with guest/kernel/pgwasm.config
)

// DefaultCmdline is the kernel command line for a kernel kind.
//
// Debian's kernel: cryptomgr.notests and noisapnp save about 5 s of boot in
// v86; init_on_free=1 zeroes freed pages, and v86 stores only non-zero pages
// in a state, so snapshots shrink by half (init_on_alloc=0: zeroing on
// allocation too would only cost time). The blacklisted initcalls were the
// slowest in a boot with initcall_debug (kprobe tracing 2.3 s, the KDF
// self-test, X.509 certificate loading, the blake2s self-test); without
// tracefs the kernel's slab at snapshot time drops from 9.4 to 3.5 MB.
// ipv6.disable=1: the relay carries IPv4 only.
//
// Our kernel has none of what those switches turn off (no crypto manager,
// ISA PnP, tracing, audit, lockup detectors, IPv6 or module certificates),
// and an unknown switch without "=" would reach init as an argument; it
// keeps the console, the clock, the zeroing of freed pages and the quiet.
func DefaultCmdline(kernelKind string) string {
	if kernelKind == KernelSource {
		return "console=ttyS0 tsc=reliable mitigations=off random.trust_cpu=on quiet loglevel=3 init_on_free=1 init_on_alloc=0"
	}
	return "console=ttyS0 tsc=reliable mitigations=off nowatchdog audit=0 random.trust_cpu=on quiet loglevel=3 cryptomgr.notests noisapnp init_on_free=1 init_on_alloc=0 ipv6.disable=1 initcall_blacklist=tracer_init_tracefs,trace_eval_init,init_kprobe_trace,crypto_kdf108_init,load_system_certificate_list,blake2s_mod_init"
}

// checkKernel fills the command line and refuses an unknown kernel kind.
func checkKernel(cfg *Config) error {
	switch cfg.Kernel {
	case "":
		cfg.Kernel = KernelSource
	case KernelDebian, KernelSource:
	default:
		return fmt.Errorf("unknown kernel %q: want %s (Debian's linux-image-686) or %s (built from %s)", cfg.Kernel, KernelDebian, KernelSource, cfg.KernelSourcePackage)
	}
	if cfg.Kernel == KernelSource && cfg.KernelSourcePackage == "" {
		return errors.New("--kernel source needs a kernel source package (KernelSourcePackage)")
	}
	if cfg.Cmdline == "" {
		cfg.Cmdline = DefaultCmdline(cfg.Kernel)
	}
	return nil
}

// Result says what Build did.
type Result struct {
	Manifest *manifest.Image
	CacheHit bool
}

// Build builds the image into cfg.Out, or does nothing when cfg.Out already
// holds an image built from the same inputs.
func Build(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger
	start := time.Now()
	if err := checkKernel(&cfg); err != nil {
		return nil, err
	}
	agent, err := os.ReadFile(cfg.AgentPath)
	if err != nil {
		return nil, fmt.Errorf("cannot read the guest agent (build it with make build): %w", err)
	}
	apt, cacheDir, unlock, err := openApt(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if len(cfg.Lock) > 0 {
		if apt.Lock, err = deb.ParseLock(cfg.Lock); err != nil {
			return nil, fmt.Errorf("package lock: %w", err)
		}
		// --extra-packages and their dependencies are the user's choice,
		// not the lock's.
		if len(cfg.ExtraPackages) > 0 {
			apt.Unlocked = func(deb.Package) bool { return true }
			log.Warn("--extra-packages: packages missing from the lock are allowed in this build")
		}
	}
	in, err := resolveInputs(ctx, apt, cfg)
	if err != nil {
		return nil, err
	}
	for _, r := range in.recipes {
		res, err := extbuild.Build(ctx, extbuild.Config{Apt: apt, CacheDir: cacheDir, Logger: log}, r)
		if err != nil {
			return nil, fmt.Errorf("cannot build %s for i386: %w", r.Package, err)
		}
		in.exts = append(in.exts, res)
	}
	if cfg.Kernel == KernelSource {
		if err := buildOurKernel(ctx, apt, cacheDir, in, log); err != nil {
			return nil, err
		}
	}
	key := cacheKey(cfg, in, agent)
	if !cfg.Force {
		if m, err := manifest.Read(cfg.Out); err == nil && m.Key == key && complete(m, cfg.Out) == nil {
			log.Info("image is up to date", "dir", cfg.Out, "key", key[:12])
			return &Result{Manifest: m, CacheHit: true}, nil
		}
	}
	// Fetch records each file's path in the slice it is given.
	n := len(in.root)
	all := append(append(make([]deb.Package, 0, n+2), in.root...), in.bios, in.kernel)
	if in.kernelBuild != nil {
		all = all[:n+1] // the kernel is built; Debian's package is not needed
	}
	if err := apt.Fetch(ctx, all); err != nil {
		return nil, err
	}
	in.root, in.bios = all[:n], all[n]
	if in.kernelBuild == nil {
		in.kernel = all[n+1]
	}

	work := cfg.Out + ".tmp"
	if err := os.RemoveAll(work); err != nil {
		return nil, fmt.Errorf("cannot clear the work directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(work)
		}
	}()
	staged := filepath.Join(work, "image")
	if err := os.MkdirAll(staged, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the work directory: %w", err)
	}
	m, err := assemble(ctx, cfg, in, agent, work, staged, vmStepKey(cfg, in))
	if err != nil {
		return nil, err
	}
	m.Key = key
	m.Mirror = "" // never recorded: the mirror is a property of the build machine
	if err := m.Write(staged); err != nil {
		return nil, err
	}
	if err := replaceDir(staged, cfg.Out); err != nil {
		return nil, err
	}
	ok = true
	os.RemoveAll(work)
	log.Info("image built", "dir", cfg.Out, "key", key[:12], "blob_bytes", m.FS.BlobBytes, "took", time.Since(start).Round(time.Second))
	return &Result{Manifest: m}, nil
}

// openApt settles the mirror and the cache directory, takes the cache's
// lock and brings the private apt state's package lists up to date.
func openApt(ctx context.Context, cfg *Config) (*deb.Apt, string, func(), error) {
	log := cfg.Logger
	mirror := cfg.Mirror
	if mirror == "" {
		var err error
		if mirror, err = deb.MirrorFromHost(cfg.EtcApt); err != nil {
			return nil, "", nil, err
		}
	}
	if cfg.CacheDir == "" {
		return nil, "", nil, errors.New("no cache directory: set PGWASM_CACHE, XDG_CACHE_HOME or HOME, or pass --cache")
	}
	cacheDir, err := filepath.Abs(cfg.CacheDir)
	if err != nil {
		return nil, "", nil, err
	}
	cfg.CacheDir = cacheDir
	// The VM step's harness runs in its own directory: every path it is
	// given must be absolute.
	if cfg.Out, err = filepath.Abs(cfg.Out); err != nil {
		return nil, "", nil, err
	}
	unlock, err := lockCache(ctx, cacheDir, log)
	if err != nil {
		return nil, "", nil, err
	}
	apt := &deb.Apt{
		Dir: filepath.Join(cacheDir, "apt"), Mirror: mirror, Suites: cfg.Suites, Arch: "i386",
		Keyring: cfg.Keyring, MaxListAge: 12 * time.Hour, Logger: log,
	}
	if err := apt.Update(ctx); err != nil {
		unlock()
		return nil, "", nil, err
	}
	return apt, cacheDir, unlock, nil
}

// buildOurKernel builds the kernel from the source package with the
// repository's configuration (kernelbuild), or takes it from the cache.
func buildOurKernel(ctx context.Context, apt *deb.Apt, cacheDir string, in *inputs, log *slog.Logger) error {
	src := []deb.Package{in.kernelSource}
	if err := apt.Fetch(ctx, src); err != nil {
		return fmt.Errorf("cannot download the kernel source: %w", err)
	}
	in.kernelSource = src[0]
	res, err := kernelbuild.Build(ctx, kernelbuild.Config{CacheDir: cacheDir, Logger: log}, in.kernelSource, kernel.Config)
	if err != nil {
		return err
	}
	in.kernelBuild = res
	return nil
}

// Lock resolves the image's packages as the archive offers them today,
// ignoring cfg.Lock, and returns the lock of everything a build would use:
// the root's closure, both kernels (Debian's package and the source
// package of ours), the BIOS and the extension builds' sysroot packages
// (extensions are built, or taken from the cache, on the way).
func Lock(ctx context.Context, cfg Config) (*deb.Lock, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	apt, cacheDir, unlock, err := openApt(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	defer unlock()
	in, err := resolveInputs(ctx, apt, cfg)
	if err != nil {
		return nil, err
	}
	for _, r := range in.recipes {
		if _, err := extbuild.Build(ctx, extbuild.Config{Apt: apt, CacheDir: cacheDir, Logger: cfg.Logger}, r); err != nil {
			return nil, fmt.Errorf("cannot build %s for i386: %w", r.Package, err)
		}
	}
	return deb.NewLock(apt.Resolved())
}

// DefaultCacheDir is where downloads and build results are kept:
// $XDG_CACHE_HOME/pgwasm, or ~/.cache/pgwasm. Outside the checkout, so a
// fresh clone, a second checkout and CI on the same machine reuse them.
// Empty when the user has no home directory.
func DefaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "pgwasm")
}

// lockCache takes the cache's lock: apt runs without its own locks in the
// private state directory, and two checkouts may build at once.
func lockCache(ctx context.Context, dir string, log *slog.Logger) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the cache directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open the cache lock: %w", err)
	}
	for waited := false; ; waited = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("cannot lock the cache %s: %w", dir, err)
		}
		if !waited {
			log.Info("waiting for another build using the same cache", "cache", dir)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return func() { f.Close() }, nil
}

// inputs are the resolved packages of one build.
type inputs struct {
	root   []deb.Package
	kernel deb.Package // Debian's kernel package
	// kernelSource is Debian's kernel source package; kernelBuild, our
	// kernel built from it, is set only for --kernel source.
	kernelSource deb.Package
	kernelBuild  *kernelbuild.Result
	bios         deb.Package
	recipes      []extbuild.Recipe  // extensions built from source
	exts         []*extbuild.Result // their builds, in recipe order
}

func resolveInputs(ctx context.Context, apt *deb.Apt, cfg Config) (*inputs, error) {
	// Every image has the pgwasm module: the server preloads it (pgconf).
	in := &inputs{recipes: []extbuild.Recipe{extbuild.ModuleRecipe(guest.ExtensionModule())}}
	names := append([]string{}, cfg.Packages...)
	seen := map[string]bool{}
	for _, n := range append(append([]string{}, cfg.Extensions...), cfg.ExtraPackages...) {
		r, ok := extbuild.Lookup(n)
		switch {
		case ok && !seen[r.Package]:
			seen[r.Package] = true
			in.recipes = append(in.recipes, r)
		case ok:
		case slices.Contains(cfg.Extensions, n):
			return nil, fmt.Errorf("cannot build extension %s from source: extbuild has no recipe for it", n)
		default:
			names = append(names, n)
		}
	}
	root, err := apt.Resolve(ctx, names, true)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve the root packages: %w", err)
	}
	in.root = root
	if in.kernel, err = resolveDebianKernel(ctx, apt, cfg); err != nil {
		return nil, err
	}
	// Resolved for every build, so the lock always pins it; downloaded only
	// when the kernel is built. Its dependencies (binutils, xz-utils) are
	// for an installed system and are not resolved.
	if cfg.KernelSourcePackage != "" {
		src, err := apt.Resolve(ctx, []string{cfg.KernelSourcePackage}, false)
		if err != nil || len(src) != 1 {
			return nil, fmt.Errorf("cannot resolve the kernel source %s: %v", cfg.KernelSourcePackage, err)
		}
		in.kernelSource = src[0]
	}
	bios, err := apt.Resolve(ctx, []string{"seabios"}, false)
	if err != nil || len(bios) != 1 {
		return nil, fmt.Errorf("cannot resolve seabios (v86 needs its BIOS): %v", err)
	}
	in.bios = bios[0]
	return in, nil
}

// resolveDebianKernel is the versioned package Debian's kernel metapackage
// (cfg.KernelPackage) names. It is resolved for every build, so the lock
// always pins it, and downloaded only for --kernel debian.
func resolveDebianKernel(ctx context.Context, apt *deb.Apt, cfg Config) (deb.Package, error) {
	// The metapackage depends on the versioned kernel; its other
	// dependencies (initramfs-tools, kmod...) are for installed systems.
	kpkgs, err := apt.Resolve(ctx, []string{cfg.KernelPackage}, true)
	if err != nil {
		return deb.Package{}, fmt.Errorf("cannot resolve the kernel: %w", err)
	}
	for _, p := range kpkgs {
		if strings.HasPrefix(p.Name, "linux-image-") && p.Name != cfg.KernelPackage && !strings.HasSuffix(p.Name, "-dbg") {
			return p, nil
		}
	}
	return deb.Package{}, fmt.Errorf("%s names no versioned linux-image package", cfg.KernelPackage)
}

// DebianModules returns the lib/modules/<version> directory of Debian's
// kernel package (cfg.KernelPackage at the lock's version), downloaded and
// unpacked into the cache as a --kernel debian build does. The kmod tests
// resolve the initramfs modules from it, so they run (and do not skip) on a
// cache where only --kernel source images were built.
func DebianModules(ctx context.Context, cfg Config) (string, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	apt, cacheDir, unlock, err := openApt(ctx, &cfg)
	if err != nil {
		return "", err
	}
	defer unlock()
	if len(cfg.Lock) > 0 {
		if apt.Lock, err = deb.ParseLock(cfg.Lock); err != nil {
			return "", fmt.Errorf("package lock: %w", err)
		}
	}
	kpkg, err := resolveDebianKernel(ctx, apt, cfg)
	if err != nil {
		return "", err
	}
	pkgs := []deb.Package{kpkg}
	if err := apt.Fetch(ctx, pkgs); err != nil {
		return "", err
	}
	kdir, err := kernelTree(ctx, pkgs[0], filepath.Join(cacheDir, "kernel"))
	if err != nil {
		return "", err
	}
	mods := modulesDirs(kdir)
	if len(mods) != 1 {
		return "", fmt.Errorf("kernel package %s: want one modules directory, found %d", kpkg.Name, len(mods))
	}
	return mods[0], nil
}

// netMTU is the MTU an image's NIC offers its guest (manifest.Image.NetMTU).
func netMTU(device string) int {
	if device == "virtio" {
		return manifest.VirtioNetMTU
	}
	return 0
}

// localAPIC says whether an image's machine has v86's local APIC
// (manifest.Image.ACPI): only our kernel is configured for it and measured
// with it (guest/kernel/pgwasm.config); Debian's kernel keeps the machine it
// was tested on.
func localAPIC(kernel string) bool { return kernel == KernelSource }

// cacheKey hashes every input of the build: packages (by their index
// checksums), the agent, the guest files, the generated configuration and the
// builder version.
func cacheKey(cfg Config, in *inputs, agent []byte) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	enc.Encode(struct {
		Builder  string
		Packages []deb.Package
		Kernel   deb.Package
		BIOS     deb.Package
		Cmdline  string
		Net      string
		NetMTU   int  `json:",omitempty"`
		ACPI     bool `json:",omitempty"`
		Agent    [32]byte
		Guest    [32]byte
		Memory   [32]byte
		Exts     []string
		// Our kernel's build key (source package, configuration,
		// compilers); absent for Debian's kernel, whose key stays as it was.
		KernelBuild string `json:",omitempty"`
	}{BuilderVersion, in.root, imageKernel(in), in.bios, cfg.Cmdline, cfg.NetDevice, netMTU(cfg.NetDevice), localAPIC(cfg.Kernel), sha256.Sum256(agent), guestHash(), sha256.Sum256(guest.Memory), extKeys(in.exts), kernelBuildKey(in)})
	return hex.EncodeToString(h.Sum(nil))
}

// vmStepKey hashes the inputs of the steps run inside the VM (runInVM):
// everything but the agent, which changes most often and takes no part in
// initdb, and the memory settings (guest/memory), which only the product's
// boot reads.
func vmStepKey(cfg Config, in *inputs) string {
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		Builder  string
		Packages []deb.Package
		Kernel   deb.Package
		BIOS     deb.Package
		Cmdline  string
		Guest    [32]byte
		Exts     []string
		// The VM step boots the image's kernel: ours is an input too.
		KernelBuild string `json:",omitempty"`
	}{BuilderVersion, in.root, imageKernel(in), in.bios, cfg.Cmdline, guestHash(), extKeys(in.exts), kernelBuildKey(in)})
	return hex.EncodeToString(h.Sum(nil))
}

// imageKernel is the package the image's kernel comes from: Debian's
// kernel, or the source package ours is built from.
func imageKernel(in *inputs) deb.Package {
	if in.kernelBuild != nil {
		return in.kernelSource
	}
	return in.kernel
}

func kernelBuildKey(in *inputs) string {
	if in.kernelBuild == nil {
		return ""
	}
	return in.kernelBuild.Key
}

func extKeys(exts []*extbuild.Result) []string {
	var keys []string
	for _, e := range exts {
		keys = append(keys, e.Key)
	}
	return keys
}

// replaceDir moves staged to out, replacing an older out only after the new
// one is complete.
func replaceDir(staged, out string) error {
	old := out + ".old"
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("cannot remove %s: %w", old, err)
	}
	if _, err := os.Stat(out); err == nil {
		if err := os.Rename(out, old); err != nil {
			return fmt.Errorf("cannot move the old image aside: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(staged, out); err != nil {
		return fmt.Errorf("cannot move the new image into place: %w", err)
	}
	return os.RemoveAll(old)
}
