// Package deb resolves, downloads and unpacks Debian i386 packages with the
// host's own apt tools, in a private apt state directory so the build never
// changes the host's apt setup.
package deb

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

// Package is one resolved binary package: what the image manifest records
// of it (the same JSON, so cache keys built from it did not change), and
// where it was downloaded.
type Package struct {
	manifest.Package
	// Path is the downloaded .deb on this machine; not part of the manifest.
	Path string `json:"-"`
}

// Apt runs apt-get and apt-cache against a private state directory.
type Apt struct {
	Dir     string   // private state: lists, cache, sources, downloaded debs
	Mirror  string   // archive URI, read from the host (MirrorFromHost)
	Suites  []string // e.g. bookworm (kernel) and trixie (PostgreSQL 17)
	Arch    string   // i386
	Keyring string   // Signed-By keyring for the archive
	// MaxListAge is how old the package lists may be before Update fetches
	// them again; a rebuild soon after a build reuses them.
	MaxListAge time.Duration
	Logger     *slog.Logger
	// Lock, when set, pins every resolution to the locked versions and
	// fails when the archive no longer offers them (lock.go).
	Lock *Lock
	// Unlocked says which packages may be missing from the lock (those an
	// --extra-packages build adds); nil allows none.
	Unlocked func(Package) bool

	// resolved collects every package Resolve returned, for `image lock`.
	resolved []Package
}

// Resolved returns every package Resolve has returned so far.
func (a *Apt) Resolved() []Package { return append([]Package(nil), a.resolved...) }

// ErrUnknownPackage is returned when a requested package does not exist for
// the architecture in the configured suites.
var ErrUnknownPackage = errors.New("unknown package")

func (a *Apt) options() []string {
	return append(PrivateOptions(a.Dir),
		"-o", "APT::Architecture="+a.Arch,
		"-o", "APT::Architectures::="+a.Arch)
}

// PrivateOptions are the apt-get/apt-cache options that keep all of apt's
// state (lists, cache, sources, status) under dir, leaving the host's apt
// setup untouched. The extension build uses them for its deb-src state too.
func PrivateOptions(dir string) []string {
	return []string{
		"-o", "Dir::State=" + filepath.Join(dir, "state"),
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"),
		"-o", "Dir::State::status=" + filepath.Join(dir, "status"),
		"-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		// Some hosts (Debian's container images) turn apt's binary caches
		// off in apt.conf.d; every apt call then parses all lists again
		// (about 3 s each).
		"-o", "Dir::Cache::pkgcache=pkgcache.bin",
		"-o", "Dir::Cache::srcpkgcache=srcpkgcache.bin",
		"-o", "Dir::Etc::sourcelist=" + filepath.Join(dir, "sources.list"),
		"-o", "Dir::Etc::sourceparts=" + filepath.Join(dir, "sources.list.d"),
		"-o", "Dir::Etc::preferencesparts=" + filepath.Join(dir, "preferences.d"),
		"-o", "Dir::Etc::preferences=" + filepath.Join(dir, "preferences"),
		"-o", "APT::Get::AllowUnauthenticated=false",
		"-o", "Debug::NoLocking=1",
		// Downloads land in a directory the _apt sandbox user may not own.
		"-o", "APT::Sandbox::User=root",
		"-q",
	}
}

func (a *Apt) sourcesList() string {
	var b strings.Builder
	b.WriteString("# written by pgwasm image build from the host's apt configuration\n")
	for _, s := range a.Suites {
		fmt.Fprintf(&b, "deb [arch=%s signed-by=%s] %s %s main\n", a.Arch, a.Keyring, a.Mirror, s)
	}
	return b.String()
}

// Update writes the private sources list and fetches package lists unless
// fresh ones for the same sources are already there.
func (a *Apt) Update(ctx context.Context) error {
	if !filepath.IsAbs(a.Dir) {
		return fmt.Errorf("apt state directory %q must be absolute", a.Dir)
	}
	for _, d := range []string{"state", "lists/partial", "cache/archives/partial", "preferences.d", "sources.list.d", "debs"} {
		if err := os.MkdirAll(filepath.Join(a.Dir, d), 0o755); err != nil {
			return fmt.Errorf("cannot create apt state directory: %w", err)
		}
	}
	if err := writeIfChanged(filepath.Join(a.Dir, "status"), ""); err != nil {
		return err
	}
	srcPath := filepath.Join(a.Dir, "sources.list")
	want := a.sourcesList()
	old, _ := os.ReadFile(srcPath)
	stamp := filepath.Join(a.Dir, "lists", ".updated")
	if string(old) == want {
		if st, err := os.Stat(stamp); err == nil && time.Since(st.ModTime()) < a.MaxListAge {
			a.Logger.Debug("apt lists are fresh", "age", time.Since(st.ModTime()).Round(time.Second))
			return nil
		}
	}
	if err := os.WriteFile(srcPath, []byte(want), 0o644); err != nil {
		return fmt.Errorf("cannot write private sources.list: %w", err)
	}
	os.Remove(stamp)
	// Resolutions against the old lists are void.
	os.RemoveAll(filepath.Join(a.Dir, "resolved"))
	a.Logger.Info("fetching package lists", "suites", strings.Join(a.Suites, ","), "arch", a.Arch)
	out, err := a.run(ctx, "apt-get", "update")
	if err != nil {
		return fmt.Errorf("cannot fetch package lists (is the Debian archive reachable?): %w", err)
	}
	// apt-get update exits 0 even when some index failed to download.
	if bytes.Contains(out, []byte("\nW: Failed to fetch")) || bytes.Contains(out, []byte("\nE: ")) {
		return fmt.Errorf("cannot fetch package lists: %s", rootfs.Tail(out, 5))
	}
	return os.WriteFile(stamp, nil, 0o644)
}

var instLine = regexp.MustCompile(`^Inst (\S+) \((\S+) .*\[(\S+)\]\)`)

// Resolve returns the named packages and, when withDeps is set, everything
// they depend on (Depends and Pre-Depends, no Recommends), exactly as apt
// would install them on an empty system. The result is sorted by name.
func (a *Apt) Resolve(ctx context.Context, names []string, withDeps bool) ([]Package, error) {
	pkgs, err := a.closure(ctx, names)
	if err != nil {
		return nil, err
	}
	if !withDeps {
		// apt's simulated install of the packages with their dependencies
		// tells the candidate versions; only the packages asked for are
		// kept, and only they are checked against the lock and recorded
		// for it (linux-source's binutils never goes into the image).
		want := map[string]bool{}
		for _, n := range names {
			want[n] = true
		}
		pkgs = slices.DeleteFunc(pkgs, func(p Package) bool { return !want[p.Name] })
	}
	if err := a.checkResolved(ctx, pkgs); err != nil {
		return nil, err
	}
	a.resolved = append(a.resolved, pkgs...)
	return pkgs, nil
}

// closure is the dependency closure of names, from the resolution cache
// when the same names were resolved against the same package lists.
func (a *Apt) closure(ctx context.Context, names []string) ([]Package, error) {
	key, keyErr := a.resolveKey(names)
	if keyErr == nil {
		if pkgs, ok := a.cachedResolve(key); ok {
			return pkgs, nil
		}
	}
	pkgs, err := a.resolve(ctx, names)
	if err != nil {
		return nil, err
	}
	if keyErr == nil {
		a.storeResolve(key, pkgs)
	}
	return pkgs, nil
}

// resolveKey names one resolution: the same names against the same package
// lists (the stamp Update leaves when it fetched them) give the same answer.
// A warm rebuild would otherwise spend most of its time in apt (one
// `apt-get -s install` and one `apt-cache show` of 2-6 s each, per call).
func (a *Apt) resolveKey(names []string) (string, error) {
	st, err := os.Stat(filepath.Join(a.Dir, "lists", ".updated"))
	if err != nil {
		return "", err
	}
	var pins string
	if a.Lock != nil {
		pins = a.Lock.preferences()
	}
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		Names   []string
		Arch    string
		Sources string
		Lists   int64
		Pins    string
	}{names, a.Arch, a.sourcesList(), st.ModTime().UnixNano(), pins})
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (a *Apt) resolvedPath(key string) string {
	return filepath.Join(a.Dir, "resolved", key+".json")
}

// cachedResolve returns an earlier resolution, or false when there is none
// or it cannot be read (then apt resolves again).
func (a *Apt) cachedResolve(key string) ([]Package, bool) {
	b, err := os.ReadFile(a.resolvedPath(key))
	if err != nil {
		return nil, false
	}
	var pkgs []Package
	if err := json.Unmarshal(b, &pkgs); err != nil || len(pkgs) == 0 {
		a.Logger.Warn("ignoring a damaged cached apt resolution", "file", a.resolvedPath(key), "err", err)
		return nil, false
	}
	for _, p := range pkgs {
		if p.Name == "" || p.Version == "" || len(p.SHA256) != 64 {
			a.Logger.Warn("ignoring a damaged cached apt resolution", "file", a.resolvedPath(key))
			return nil, false
		}
	}
	return pkgs, true
}

// storeResolve keeps a resolution for cachedResolve; failing to is no error.
func (a *Apt) storeResolve(key string, pkgs []Package) {
	b, err := json.Marshal(pkgs)
	if err != nil {
		return
	}
	p := a.resolvedPath(key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return
	}
	tmp := p + ".tmp"
	if os.WriteFile(tmp, b, 0o644) == nil {
		os.Rename(tmp, p)
	}
}

// resolve asks apt: the dependency closure of names, with checksums.
func (a *Apt) resolve(ctx context.Context, names []string) ([]Package, error) {
	prefs, cleanup, err := a.preferencesFile()
	if err != nil {
		return nil, err
	}
	defer cleanup()
	args := append(append(prefs, "-s", "--no-install-recommends", "install"), names...)
	out, err := a.run(ctx, "apt-get", args...)
	if err != nil {
		if m := regexp.MustCompile(`Unable to locate package (\S+)`).FindSubmatch(out); m != nil {
			return nil, fmt.Errorf("%w %q for %s in %s", ErrUnknownPackage, m[1], a.Arch, strings.Join(a.Suites, ","))
		}
		return nil, fmt.Errorf("cannot resolve %s: %w", strings.Join(names, " "), err)
	}
	var pkgs []Package
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := instLine.FindStringSubmatch(sc.Text()); m != nil {
			pkgs = append(pkgs, Package{Package: manifest.Package{Name: m[1], Version: m[2], Arch: m[3]}})
		}
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("apt resolved nothing for %s", strings.Join(names, " "))
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	if err := a.fillChecksums(ctx, pkgs); err != nil {
		return nil, err
	}
	return pkgs, nil
}

// fillChecksums reads each package's SHA256 and size from the (signed)
// package index, so downloads can be checked independently of apt.
func (a *Apt) fillChecksums(ctx context.Context, pkgs []Package) error {
	args := []string{"show", "--no-all-versions"}
	for _, p := range pkgs {
		args = append(args, p.Name+":"+p.Arch+"="+p.Version)
	}
	out, err := a.run(ctx, "apt-cache", args...)
	if err != nil {
		return fmt.Errorf("cannot read package checksums: %w", err)
	}
	type key struct{ name, version string }
	found := map[key]Package{}
	for _, para := range bytes.Split(out, []byte("\n\n")) {
		f := parseFields(para)
		if f["Package"] == "" {
			continue
		}
		var size int64
		fmt.Sscan(f["Size"], &size)
		found[key{f["Package"], f["Version"]}] = Package{Package: manifest.Package{SHA256: f["SHA256"], Size: size}}
	}
	for i, p := range pkgs {
		got, ok := found[key{p.Name, p.Version}]
		if !ok || got.SHA256 == "" {
			return fmt.Errorf("package index has no SHA256 for %s %s", p.Name, p.Version)
		}
		pkgs[i].SHA256, pkgs[i].Size = got.SHA256, got.Size
	}
	return nil
}

func parseFields(para []byte) map[string]string {
	f := map[string]string{}
	for _, line := range strings.Split(string(para), "\n") {
		if line == "" || line[0] == ' ' {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if ok {
			f[k] = strings.TrimSpace(v)
		}
	}
	return f
}

// Fetch downloads the packages that are not already cached and checks every
// file's SHA256 against the package index. Files that fail the check are
// removed, so a corrupt download is never taken for a good one.
func (a *Apt) Fetch(ctx context.Context, pkgs []Package) error {
	dir := filepath.Join(a.Dir, "debs")
	var missing []string
	for i := range pkgs {
		p := &pkgs[i]
		p.Path = filepath.Join(dir, debFileName(*p))
		if err := VerifyFile(p.Path, p.SHA256); err == nil {
			continue
		}
		os.Remove(p.Path)
		missing = append(missing, p.Name+":"+p.Arch+"="+p.Version)
	}
	if len(missing) > 0 {
		a.Logger.Info("downloading packages", "count", len(missing))
		cmd, err := a.command(ctx, "apt-get", append([]string{"download"}, missing...)...)
		if err != nil {
			return err
		}
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cannot download packages: %w: %s", err, rootfs.Tail(out, 5))
		}
	}
	for _, p := range pkgs {
		if err := VerifyFile(p.Path, p.SHA256); err != nil {
			os.Remove(p.Path)
			return fmt.Errorf("package %s %s: %w", p.Name, p.Version, err)
		}
	}
	return nil
}

// debFileName is the name apt-get download gives a package file: the epoch's
// colon is URL-escaped.
func debFileName(p Package) string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}

// VerifyFile checks a downloaded file against the SHA256 of a signed index.
func VerifyFile(path, want string) error {
	got, _, err := rootfs.HashFile(path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("corrupt download %s: sha256 %s, index says %s", filepath.Base(path), got, want)
	}
	return nil
}

func (a *Apt) command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	cmd, err := hostexec.Command(ctx, name, append(a.options(), args...)...)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	return cmd, nil
}

func (a *Apt) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd, err := a.command(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		sub := ""
		for i := 0; i < len(args); i++ {
			if args[i] == "-o" {
				i++
			} else if !strings.HasPrefix(args[i], "-") {
				sub = args[i]
				break
			}
		}
		return out, fmt.Errorf("%s %s: %w: %s", name, sub, err, rootfs.Tail(out, 5))
	}
	return out, nil
}

func writeIfChanged(path, content string) error {
	if old, err := os.ReadFile(path); err == nil && string(old) == content {
		return nil
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return nil
}
