package extbuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

const (
	pgConfig = "/usr/lib/postgresql/17/bin/pg_config"
	// sourceDateEpoch is what SOURCE_DATE_EPOCH says during the build
	// (2025-01-01, as the image's own file times).
	sourceDateEpoch = 1735689600
	resultFile      = "result.json"
	completeMarker  = ".complete"
)

// toolchainPackages are installed with their dependencies into the builder
// root. Essential packages (sh, coreutils, sed, grep...) are named because
// apt does not pull in Essential: yes packages as dependencies.
// postgresql-client-17 carries pg_config and PGXS.
var toolchainPackages = []string{
	"gcc", "make", "libc6-dev", "binutils", "postgresql-client-17",
	"dash", "coreutils", "sed", "grep", "findutils", "diffutils",
}

// serverHeaders is installed without its dependencies: it depends on clang
// and llvm-dev (hundreds of MB) only for the JIT bitcode, which the build
// turns off (with_llvm=no) and the image prunes anyway.
const serverHeaders = "postgresql-server-dev-17"

func build(ctx context.Context, cfg Config, r Recipe) (*Result, error) {
	start := time.Now()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Apt == nil {
		return nil, errors.New("extbuild: Config.Apt is required")
	}
	if r.Source == "" {
		return nil, errors.New("extbuild: the recipe names no source package")
	}
	if cfg.SourceSuite == "" {
		cfg.SourceSuite = "trixie"
	}
	if cfg.Jobs <= 0 {
		cfg.Jobs = runtime.NumCPU()
	}
	log := cfg.Logger.With("source", r.Source)
	cache, err := filepath.Abs(filepath.Join(cfg.CacheDir, "extbuild"))
	if err != nil {
		return nil, fmt.Errorf("cannot find the cache directory: %w", err)
	}
	if err := cfg.Apt.Update(ctx); err != nil {
		return nil, err
	}
	maxAge := cfg.Apt.MaxListAge
	if maxAge == 0 {
		maxAge = 12 * time.Hour
	}
	src := &srcApt{
		dir: filepath.Join(cache, "apt-src"), mirror: cfg.Apt.Mirror, suite: cfg.SourceSuite,
		keyring: cfg.Apt.Keyring, maxAge: maxAge, log: log,
	}
	if err := src.update(ctx); err != nil {
		return nil, err
	}
	sp, err := src.lookup(ctx, r.Source)
	if err != nil {
		return nil, err
	}
	tool, err := resolveToolchain(ctx, cfg.Apt, r)
	if err != nil {
		return nil, err
	}
	key := resultKey(r, cfg.SourceSuite, sp, tool)
	outDir := filepath.Join(cache, "out", r.Source+"-"+key[:16])
	if res, err := readResult(outDir); err == nil && res.Key == key {
		log.Info("extension is up to date", "version", res.Version, "key", key[:12])
		res.CacheHit = true
		return res, nil
	}

	log.Info("building extension for i386", "version", sp.Version, "toolchain_packages", len(tool))
	if err := cfg.Apt.Fetch(ctx, tool); err != nil {
		return nil, fmt.Errorf("cannot download the toolchain: %w", err)
	}
	filesDir := filepath.Join(src.dir, "files")
	if err := src.fetch(ctx, sp, filesDir); err != nil {
		return nil, err
	}
	root, err := builderRoot(ctx, cache, tool, log)
	if err != nil {
		return nil, err
	}
	buildDir := filepath.Join(root, "build")
	if err := os.RemoveAll(buildDir); err != nil {
		return nil, fmt.Errorf("cannot clear the build directory: %w", err)
	}
	if err := os.MkdirAll(buildDir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the build directory: %w", err)
	}
	defer os.RemoveAll(buildDir)
	if err := unpackSource(ctx, sp, filesDir, filepath.Join(buildDir, "src")); err != nil {
		return nil, err
	}
	t := time.Now()
	buildLog, err := runMake(ctx, root, cfg.Jobs, r.MakeArgs)
	if err != nil {
		return nil, err
	}
	log.Info("compiled", "took", time.Since(t).Round(time.Millisecond))

	tmp := outDir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("cannot clear %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the result directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	dest := filepath.Join(buildDir, "dest")
	// Headers (HEADERS in PGXS) are for building against the extension;
	// the image has no compiler.
	if err := os.RemoveAll(filepath.Join(dest, "usr", "include")); err != nil {
		return nil, err
	}
	if err := os.Rename(dest, filepath.Join(tmp, "root")); err != nil {
		return nil, fmt.Errorf("cannot move the installed files: %w", err)
	}
	res := &Result{
		Package: r.Package, Source: sp.Name, Version: sp.Version, Key: key, Toolchain: tool,
	}
	if res.Files, err = listFiles(filepath.Join(tmp, "root")); err != nil {
		return nil, err
	}
	if len(res.Files) == 0 {
		return nil, fmt.Errorf("make install of %s installed nothing", r.Source)
	}
	if err := os.WriteFile(filepath.Join(tmp, "build.log"), buildLog, 0o644); err != nil {
		return nil, fmt.Errorf("cannot write the build log: %w", err)
	}
	if err := writeResultJSON(tmp, res); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(outDir); err != nil {
		return nil, fmt.Errorf("cannot replace %s: %w", outDir, err)
	}
	if err := os.Rename(tmp, outDir); err != nil {
		return nil, fmt.Errorf("cannot move the result into place: %w", err)
	}
	res.Dir = filepath.Join(outDir, "root")
	log.Info("extension built", "version", sp.Version, "files", len(res.Files), "key", key[:12], "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// resolveToolchain returns the builder root's i386 packages, sorted by name.
func resolveToolchain(ctx context.Context, apt *deb.Apt, r Recipe) ([]deb.Package, error) {
	names := append(append([]string{}, toolchainPackages...), r.BuildDepends...)
	pkgs, err := apt.Resolve(ctx, names, true)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve the i386 toolchain: %w", err)
	}
	hdr, err := apt.Resolve(ctx, []string{serverHeaders}, false)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve the PostgreSQL server headers: %w", err)
	}
	seen := map[string]bool{}
	var out []deb.Package
	for _, p := range append(pkgs, hdr...) {
		if !seen[p.Name] {
			seen[p.Name] = true
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func toolchainKey(tool []deb.Package) string {
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		Version   string
		Toolchain []deb.Package
	}{Version, tool})
	return hex.EncodeToString(h.Sum(nil))
}

// resultKey hashes every input of one extension build.
func resultKey(r Recipe, suite string, sp *sourcePkg, tool []deb.Package) string {
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		Version string
		Recipe  Recipe
		Suite   string
		Source  *sourcePkg
		Tool    string
	}{Version, r, suite, sp, toolchainKey(tool)})
	return hex.EncodeToString(h.Sum(nil))
}

func writeResultJSON(dir string, res *Result) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, resultFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write the result: %w", err)
	}
	return nil
}

func readResult(dir string) (*Result, error) {
	b, err := os.ReadFile(filepath.Join(dir, resultFile))
	if err != nil {
		return nil, err
	}
	res := &Result{}
	if err := json.Unmarshal(b, res); err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", resultFile, err)
	}
	res.Dir = filepath.Join(dir, "root")
	// A result whose files went missing or changed is no result.
	for _, f := range res.Files {
		if err := deb.VerifyFile(filepath.Join(res.Dir, f.Path), f.SHA256); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// builderRoot returns an unpacked root with the toolchain, reusing a cached
// one built from the same packages. Roots of other toolchains are removed.
func builderRoot(ctx context.Context, cache string, tool []deb.Package, log *slog.Logger) (string, error) {
	base := filepath.Join(cache, "toolchain")
	name := toolchainKey(tool)[:16]
	root := filepath.Join(base, name)
	if _, err := os.Stat(filepath.Join(root, completeMarker)); err == nil {
		if err := checkNoMounts(root); err != nil {
			return "", err
		}
		return root, nil
	}
	t := time.Now()
	log.Info("unpacking the i386 toolchain", "packages", len(tool))
	if err := os.RemoveAll(root); err != nil {
		return "", fmt.Errorf("cannot clear the builder root: %w", err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("cannot create the builder root: %w", err)
	}
	for _, p := range tool {
		if err := deb.Unpack(ctx, p.Path, root); err != nil {
			return "", err
		}
	}
	if err := rootfs.MergeUsr(root); err != nil {
		return "", err
	}
	for _, d := range []string{"dev", "proc", "tmp", "build"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", fmt.Errorf("cannot create /%s in the builder root: %w", d, err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|fs.ModeSticky); err != nil {
		return "", err
	}
	// dash's maintainer script makes /bin/sh; nothing runs it here.
	sh := filepath.Join(root, "usr", "bin", "sh")
	if _, err := os.Lstat(sh); errors.Is(err, os.ErrNotExist) {
		if err := os.Symlink("dash", sh); err != nil {
			return "", fmt.Errorf("cannot link /bin/sh: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, completeMarker), nil, 0o644); err != nil {
		return "", err
	}
	old, _ := os.ReadDir(base)
	for _, e := range old {
		if e.Name() != name {
			os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
	log.Info("toolchain ready", "took", time.Since(t).Round(time.Millisecond))
	return root, nil
}

// checkNoMounts refuses a root whose /dev or /proc is not empty: a mount
// left behind there must never be deleted through.
func checkNoMounts(root string) error {
	for _, d := range []string{"dev", "proc"} {
		entries, _ := os.ReadDir(filepath.Join(root, d))
		if len(entries) > 0 {
			return fmt.Errorf("/%s in the builder root %s is not empty: a mount was left behind", d, root)
		}
	}
	return nil
}

// buildScript runs inside the chroot, with the make arguments as "$@".
// with_llvm=no: Debian's PGXS would compile LLVM bitcode with clang, which
// the builder root does not have and the image (jit = off) does not use.
const buildScript = `set -e
cd /build/src
set -- USE_PGXS=1 PG_CONFIG=` + pgConfig + ` with_llvm=no "$@"
echo "+ make $*"
make -j"$JOBS" "$@"
make install DESTDIR=/build/dest "$@"
find /build/dest -name '*.so' -exec strip --strip-unneeded {} +
`

// runMake builds and installs /build/src in a chroot of root: i386
// binaries run natively on amd64. The chroot is inside a private mount
// namespace, so the /dev and /proc mounts vanish with it, and under an i686
// personality, so uname -m says i686 to the build.
func runMake(ctx context.Context, root string, jobs int, makeArgs []string) ([]byte, error) {
	outer := `set -e
mount --rbind /dev "$ROOT/dev"
mount -t proc proc "$ROOT/proc"
exec chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/build LC_ALL=C.UTF-8 TMPDIR=/tmp JOBS="$JOBS" SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" /bin/sh -c "$BUILD" sh "$@"`
	args := append([]string{"i686", "unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", "sh", "-c", outer, "sh"}, makeArgs...)
	cmd := exec.CommandContext(ctx, "setarch", args...)
	cmd.Env = append(os.Environ(), "ROOT="+root, "BUILD="+buildScript, "JOBS="+strconv.Itoa(jobs), "SOURCE_DATE_EPOCH="+strconv.Itoa(sourceDateEpoch))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("extension build failed (needs root for chroot and a mount namespace): %w: %s", err, rootfs.Tail(out, 10))
	}
	if err := checkNoMounts(root); err != nil {
		return out, err
	}
	return out, nil
}

// listFiles returns the regular files and symlinks under dir, sorted.
func listFiles(dir string) ([]File, error) {
	var files []File
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("make install left %s, which is not a regular file", rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return err
		}
		files = append(files, File{Path: filepath.ToSlash(rel), Size: info.Size(), SHA256: sum})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot list the installed files: %w", err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("cannot read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// install copies res's files into root.
func install(res *Result, root string) error {
	if res == nil || res.Dir == "" {
		return errors.New("extbuild: no result to install")
	}
	for _, f := range res.Files {
		if strings.HasPrefix(f.Path, "/") || strings.HasPrefix(f.Path, "../") || strings.Contains(f.Path, "/../") {
			return fmt.Errorf("extbuild: refusing to install %q outside the root", f.Path)
		}
		from := filepath.Join(res.Dir, filepath.FromSlash(f.Path))
		to := filepath.Join(root, filepath.FromSlash(f.Path))
		st, err := os.Stat(from)
		if err != nil {
			return fmt.Errorf("cannot install %s: %w", f.Path, err)
		}
		if err := copyFile(from, to, st.Mode().Perm()); err != nil {
			return fmt.Errorf("cannot install %s: %w", f.Path, err)
		}
	}
	return nil
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	os.Remove(to) // a symlink or read-only file of the same name
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(to, mode)
}
