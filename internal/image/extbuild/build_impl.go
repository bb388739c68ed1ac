package extbuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

const (
	// sourceDateEpoch is what SOURCE_DATE_EPOCH says during the build
	// (2025-01-01, as the image's own file times).
	sourceDateEpoch = 1735689600
	resultFile      = "result.json"
	completeMarker  = ".complete"
	// logTailLines is how much of a failed build's log an error shows.
	logTailLines = 25
)

// sysrootPackages are unpacked, without their dependencies, into the
// sysroot the cross compiler builds against: the image's own libc (headers,
// crt files, the libraries vector.so links with, so its symbol versions are
// those the image provides) and PostgreSQL 17's server headers and PGXS.
// Their dependencies are programs and libraries for running PostgreSQL
// (and postgresql-server-dev-17's clang and llvm-dev, hundreds of MB, only
// for JIT bitcode, which the build turns off with with_llvm=no); nothing in
// the sysroot runs.
var sysrootPackages = []string{
	"libc6", "libc6-dev", "linux-libc-dev", "libcrypt1", "libcrypt-dev",
	"libpq-dev",            // includedir: libpq-fe.h, pg_config.h
	"postgresql-client-17", // Debian's PGXS makefiles (and the i386 pg_config, unused)
	"postgresql-server-dev-17",
}

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
	// Before any download: without the compiler nothing else is worth it.
	cc, err := findCrossCompiler(ctx)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("source", r.Source)
	cache, err := cacheDir(cfg.CacheDir)
	if err != nil {
		return nil, err
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
	var sp *sourcePkg
	if r.Local != nil {
		sp, err = localSource(r)
	} else {
		sp, err = src.find(ctx, r.Source)
	}
	if err != nil {
		return nil, err
	}
	sys, err := resolveSysroot(ctx, cfg.Apt, r)
	if err != nil {
		return nil, err
	}
	key := resultKey(r, cfg.SourceSuite, sp, sys, cc)
	outDir := filepath.Join(cache, "out", r.Source+"-"+key[:16])
	if res, err := readResult(outDir); err == nil && res.Key == key {
		log.Info("extension is up to date", "version", res.Version, "key", key[:12])
		res.CacheHit = true
		return res, nil
	}

	log.Info("cross-compiling extension for i386", "version", sp.Version, "compiler", cc.Ident, "sysroot_packages", len(sys))
	if err := cfg.Apt.Fetch(ctx, sys); err != nil {
		return nil, fmt.Errorf("cannot download the sysroot packages: %w", err)
	}
	filesDir := filepath.Join(src.dir, "files")
	if r.Local == nil {
		if err := src.fetch(ctx, sp, filesDir); err != nil {
			return nil, err
		}
	}
	sysDir, err := sysrootDir(ctx, cache, sys, log)
	if err != nil {
		return nil, err
	}
	b, err := newBuilder(cc, sysDir, pgPackageVersion(sys), cfg.Jobs)
	if err != nil {
		return nil, err
	}
	work := filepath.Join(cache, "work", r.Source+"-"+key[:16])
	if err := os.RemoveAll(work); err != nil {
		return nil, fmt.Errorf("cannot clear the build directory: %w", err)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the build directory: %w", err)
	}
	defer func() {
		os.RemoveAll(work)
		os.Remove(filepath.Dir(work)) // only when no other build is using it
	}()
	srcDir := filepath.Join(work, "src")
	if r.Local != nil {
		err = copyLocal(r.Local, srcDir)
	} else {
		err = unpackSource(ctx, sp, filesDir, srcDir)
	}
	if err != nil {
		return nil, err
	}
	res := &Result{Package: r.Package, Source: sp.Name, Version: sp.Version, Key: key, Sysroot: sys, Compiler: cc}
	if err := b.buildTree(ctx, r, srcDir, work, outDir, res, log); err != nil {
		return nil, err
	}
	log.Info("extension built", "version", sp.Version, "files", len(res.Files), "key", key[:12], "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// cacheDir is CacheDir/extbuild as an absolute path that make and the
// compiler's command line can carry.
func cacheDir(dir string) (string, error) {
	cache, err := filepath.Abs(filepath.Join(dir, "extbuild"))
	if err != nil {
		return "", fmt.Errorf("cannot find the cache directory: %w", err)
	}
	if !safePath.MatchString(cache) {
		return "", fmt.Errorf("cannot build extensions in %q: make cannot handle spaces or special characters in the cache directory's path; use another cache directory", cache)
	}
	return cache, nil
}

// resolveSysroot returns the sysroot's i386 packages, sorted by name. A
// recipe's BuildDepends come with their dependencies: the libraries they
// link against.
func resolveSysroot(ctx context.Context, apt *deb.Apt, r Recipe) ([]deb.Package, error) {
	pkgs, err := apt.Resolve(ctx, sysrootPackages, false)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve the i386 sysroot packages: %w", err)
	}
	if len(r.BuildDepends) > 0 {
		more, err := apt.Resolve(ctx, r.BuildDepends, true)
		if err != nil {
			return nil, fmt.Errorf("cannot resolve the build dependencies of %s: %w", r.Source, err)
		}
		pkgs = append(pkgs, more...)
	}
	seen := map[string]bool{}
	var out []deb.Package
	for _, p := range pkgs {
		if !seen[p.Name] {
			seen[p.Name] = true
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// pgPackageVersion is the Debian version of the sysroot's PGXS, for the
// shim's --version.
func pgPackageVersion(sys []deb.Package) string {
	for _, p := range sys {
		if p.Name == "postgresql-client-"+pgMajor {
			return p.Version
		}
	}
	return ""
}

func sysrootKey(sys []deb.Package) string {
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		Version string
		Sysroot []deb.Package
	}{Version, sys})
	return hex.EncodeToString(h.Sum(nil))
}

// resultKey hashes every input of one extension build.
func resultKey(r Recipe, suite string, sp *sourcePkg, sys []deb.Package, cc *CrossCompiler) string {
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		Version  string
		Recipe   Recipe
		Suite    string
		Source   *sourcePkg
		Sysroot  string
		Compiler *CrossCompiler
	}{Version, r, suite, sp, sysrootKey(sys), cc})
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

// sysrootDir returns the unpacked sysroot, reusing a cached one of the same
// packages. Sysroots of other packages are removed.
func sysrootDir(ctx context.Context, cache string, sys []deb.Package, log *slog.Logger) (string, error) {
	base := filepath.Join(cache, "sysroot")
	name := sysrootKey(sys)[:16]
	dir := filepath.Join(base, name)
	root := filepath.Join(dir, "root")
	if _, err := os.Stat(filepath.Join(dir, completeMarker)); err == nil {
		return root, nil
	}
	t := time.Now()
	log.Info("unpacking the i386 sysroot", "packages", len(sys))
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("cannot clear the sysroot: %w", err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("cannot create the sysroot: %w", err)
	}
	for _, p := range sys {
		if err := deb.Unpack(ctx, p.Path, root, nil); err != nil {
			return "", err
		}
	}
	// libc6-dev's linker scripts name /lib/i386-linux-gnu/libc.so.6 etc.
	if err := rootfs.MergeUsr(root, nil); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, completeMarker), nil, 0o644); err != nil {
		return "", err
	}
	old, _ := os.ReadDir(base)
	for _, e := range old {
		if e.Name() != name {
			os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
	log.Info("sysroot ready", "took", time.Since(t).Round(time.Millisecond))
	return root, nil
}

// builder compiles PGXS extensions with the cross compiler against one
// sysroot. It needs no network and no apt: the tests give it a local source
// tree.
type builder struct {
	cc      *CrossCompiler
	sysroot string
	shim    pgConfigShim
	jobs    int
}

// newBuilder reads the sysroot's Makefile.global; pgVersion is the Debian
// version of its PostgreSQL (for pg_config --version), may be empty.
func newBuilder(cc *CrossCompiler, sysroot string, pgVersion string, jobs int) (*builder, error) {
	if !safePath.MatchString(sysroot) {
		return nil, fmt.Errorf("cannot build extensions in %q: make cannot handle spaces or special characters in the sysroot's path", sysroot)
	}
	vars, err := readMakefileGlobal(filepath.Join(sysroot, pgPath(pgMakefileGlobal)))
	if err != nil {
		return nil, err
	}
	version := "PostgreSQL " + vars["VERSION"]
	if pgVersion != "" {
		version += " (Debian " + pgVersion + ")"
	}
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	return &builder{
		cc: cc, sysroot: sysroot, jobs: jobs,
		shim: pgConfigShim{sysroot: sysroot, cc: cc.CC + " --sysroot=" + sysroot, vars: vars, version: version},
	}, nil
}

// buildTree compiles and installs srcDir (scratch space in work) and moves
// the installed files into outDir, filling in res. outDir appears complete
// or not at all.
func (b *builder) buildTree(ctx context.Context, r Recipe, srcDir, work, outDir string, res *Result, log *slog.Logger) error {
	dest := filepath.Join(work, "dest")
	t := time.Now()
	buildLog, err := b.compile(ctx, r, srcDir, work, dest)
	if err != nil {
		return err
	}
	log.Info("compiled", "took", time.Since(t).Round(time.Millisecond))
	if err := b.tidy(dest); err != nil {
		return err
	}
	if err := b.strip(ctx, dest); err != nil {
		return err
	}
	files, err := listFiles(dest)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("make install of %s installed nothing", recipeName(r))
	}
	if err := checkSymbolVersions(dest, b.sysroot, files); err != nil {
		return fmt.Errorf("extension %s: %w", recipeName(r), err)
	}
	res.Files = files

	tmp := outDir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("cannot clear %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("cannot create the result directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Rename(dest, filepath.Join(tmp, "root")); err != nil {
		return fmt.Errorf("cannot move the installed files: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "build.log"), buildLog, 0o644); err != nil {
		return fmt.Errorf("cannot write the build log: %w", err)
	}
	if err := writeResultJSON(tmp, res); err != nil {
		return err
	}
	if err := os.RemoveAll(outDir); err != nil {
		return fmt.Errorf("cannot replace %s: %w", outDir, err)
	}
	if err := os.Rename(tmp, outDir); err != nil {
		return fmt.Errorf("cannot move the result into place: %w", err)
	}
	res.Dir = filepath.Join(outDir, "root")
	return nil
}

func recipeName(r Recipe) string {
	if r.Package != "" && r.Package != r.Source {
		return r.Package + " (source " + r.Source + ")"
	}
	return r.Source
}

// compile runs make and make install DESTDIR=dest in srcDir. make and the
// shell it starts are the host's; the environment is built from nothing, so
// CC, CFLAGS or MAKEFLAGS of the caller's cannot leak in, and its PATH holds
// host directories only (the shim's and the caller's, minus anything in the
// sysroot), so no i386 program of the sysroot is ever found by name.
func (b *builder) compile(ctx context.Context, r Recipe, srcDir, work, dest string) ([]byte, error) {
	binDir := filepath.Join(work, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the pg_config directory: %w", err)
	}
	pgConfig := filepath.Join(binDir, "pg_config")
	if err := os.WriteFile(pgConfig, []byte(b.shim.script()), 0o755); err != nil {
		return nil, fmt.Errorf("cannot write the pg_config shim: %w", err)
	}
	tmp := filepath.Join(work, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	srcDir, err := filepath.Abs(srcDir)
	if err != nil {
		return nil, err
	}
	if !safePath.MatchString(srcDir) {
		return nil, fmt.Errorf("cannot build extension %s in %q: make cannot handle spaces or special characters in its path", recipeName(r), srcDir)
	}
	// The prefix maps write header paths (__FILE__ in PostgreSQL's inline
	// functions, debug info and so the build ID) as the image has them and
	// the source directory as /build/src, so the module does not depend on
	// where the cache is.
	cc := b.cc.CC + " --sysroot=" + b.sysroot +
		" -ffile-prefix-map=" + b.sysroot + "= -ffile-prefix-map=" + srcDir + "=/build/src"
	// with_llvm=no: Debian's PGXS would compile LLVM bitcode with clang,
	// which the image (jit = off) does not use. CPPFLAGS is Makefile.global's
	// with its host include directories moved into the sysroot.
	args := append([]string{
		"USE_PGXS=1", "PG_CONFIG=" + pgConfig, "with_llvm=no",
		"CC=" + cc, "CPP=" + cc + " -E", "CPPFLAGS=" + sysrootFlags(b.shim.vars["CPPFLAGS"]),
	}, r.MakeArgs...)
	env := []string{
		"PATH=" + hostPath(binDir, b.sysroot), "HOME=" + work, "TMPDIR=" + tmp, "LC_ALL=C",
		"SOURCE_DATE_EPOCH=" + strconv.Itoa(sourceDateEpoch),
	}
	var out bytes.Buffer
	for _, step := range [][]string{
		{"-j" + strconv.Itoa(b.jobs)},
		{"install", "DESTDIR=" + dest},
	} {
		full := append(append([]string{}, step...), args...)
		fmt.Fprintf(&out, "+ make %s\n", strings.Join(full, " "))
		cmd, err := hostexec.Command(ctx, "make", full...)
		if err != nil {
			return out.Bytes(), fmt.Errorf("cannot build extension %s: %w", recipeName(r), err)
		}
		cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = srcDir, env, &out, &out
		if err := cmd.Run(); err != nil {
			return out.Bytes(), fmt.Errorf("cannot build extension %s: make %s failed (%v); the build log ends:\n%s",
				recipeName(r), step[0], err, tailLines(out.Bytes(), logTailLines))
		}
	}
	return out.Bytes(), nil
}

// hostPath is first, then the directories of this process's PATH that are
// absolute and outside the sysroot.
func hostPath(first, sysroot string) string {
	dirs := []string{first}
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		if !filepath.IsAbs(d) || d == sysroot || strings.HasPrefix(d, sysroot+string(filepath.Separator)) {
			continue
		}
		dirs = append(dirs, d)
	}
	return strings.Join(dirs, string(filepath.ListSeparator))
}

func tailLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tidy removes what the image does not need from the installed tree:
// headers (HEADERS in PGXS) are for building against the extension, and the
// image has no compiler. They land in usr/include, or under the sysroot's
// path when installed to the shim's includedir-server.
func (b *builder) tidy(dest string) error {
	if err := os.RemoveAll(filepath.Join(dest, "usr", "include")); err != nil {
		return err
	}
	mirror := filepath.Join(dest, b.sysroot)
	if err := os.RemoveAll(mirror); err != nil {
		return err
	}
	for d := filepath.Dir(mirror); d != dest && strings.HasPrefix(d, dest); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break // not empty: the extension installed something there
		}
	}
	return nil
}

// strip removes symbols from every ELF file under dest with the cross
// binutils' strip (a host program).
func (b *builder) strip(ctx context.Context, dest string) error {
	return filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if !isELF(p) {
			return nil
		}
		if _, err := runHost(ctx, b.cc.Strip, "--strip-unneeded", p); err != nil {
			return fmt.Errorf("cannot strip %s: %w", filepath.Base(p), err)
		}
		return nil
	})
}

func isELF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 4)
	n, _ := io.ReadFull(f, head)
	return n == 4 && string(head) == elf.ELFMAG
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
		sum, _, err := rootfs.HashFile(p)
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
