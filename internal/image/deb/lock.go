package deb

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// Lock is the committed list of exact package versions the image is built
// from (internal/image/packages.lock): the archive moves (a point release
// replaces a version, and the old one disappears), and without it the
// image silently changes with it. `pgwasm image lock` (make lock) rewrites
// it on purpose; a build resolves exactly these versions or fails naming
// the package, the locked version and what the archive offers instead.
type Lock struct {
	entries map[string]Package // by name:arch
}

// LockHeader starts every lock file.
const LockHeader = `# pgwasm image package lock: the exact Debian packages the image is built
# from, with the SHA256 of each .deb. Refresh it on purpose with ` + "`make lock`" + `
# (pgwasm image lock) and review the diff (docs/image.md, "Package lock").
# name arch version sha256 size
`

func lockKey(name, arch string) string { return name + ":" + arch }

// NewLock makes a lock of pkgs (a later duplicate of a name must agree).
func NewLock(pkgs []Package) (*Lock, error) {
	l := &Lock{entries: map[string]Package{}}
	for _, p := range pkgs {
		if p.Name == "" || p.Version == "" || p.Arch == "" || len(p.SHA256) != 64 {
			return nil, fmt.Errorf("cannot lock package %+v: name, version, arch and sha256 are needed", p)
		}
		k := lockKey(p.Name, p.Arch)
		if old, ok := l.entries[k]; ok && (old.Version != p.Version || old.SHA256 != p.SHA256) {
			return nil, fmt.Errorf("package %s resolved as both %s and %s", k, old.Version, p.Version)
		}
		p.Path = ""
		l.entries[k] = p
	}
	return l, nil
}

// ParseLock reads a lock file's text.
func ParseLock(b []byte) (*Lock, error) {
	var pkgs []Package
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 5 {
			return nil, fmt.Errorf("lock file line %d: want name, arch, version, sha256 and size, got %q", n, line)
		}
		size, err := strconv.ParseInt(f[4], 10, 64)
		if err != nil || size <= 0 {
			return nil, fmt.Errorf("lock file line %d: bad size %q", n, f[4])
		}
		pkgs = append(pkgs, Package{Package: manifest.Package{Name: f[0], Arch: f[1], Version: f[2], SHA256: f[3], Size: size}})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(pkgs) == 0 {
		return nil, errors.New("lock file lists no packages")
	}
	return NewLock(pkgs)
}

// Packages lists the lock's packages sorted by name and architecture.
func (l *Lock) Packages() []Package {
	out := make([]Package, 0, len(l.entries))
	for _, p := range l.entries {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Arch < out[j].Arch
	})
	return out
}

// Format renders the lock file.
func (l *Lock) Format() []byte {
	var b bytes.Buffer
	b.WriteString(LockHeader)
	for _, p := range l.Packages() {
		fmt.Fprintf(&b, "%s %s %s %s %d\n", p.Name, p.Arch, p.Version, p.SHA256, p.Size)
	}
	return b.Bytes()
}

// preferences pins every locked version above anything else apt could pick
// (priority 1001), so apt resolves the locked closure while the archive
// still offers it.
func (l *Lock) preferences() string {
	var b strings.Builder
	b.WriteString("# written by pgwasm image build from the package lock\n")
	for _, p := range l.Packages() {
		fmt.Fprintf(&b, "Package: %s:%s\nPin: version %s\nPin-Priority: 1001\n\n", p.Name, p.Arch, p.Version)
	}
	return b.String()
}

// check compares what apt resolved with the lock. index is the archive's
// package index (Packages stanzas, as `apt-cache show` prints them) for the
// packages that differ, so the error can say what the archive offers.
// Packages missing from the lock are an error unless unlocked allows them
// (user-requested extra packages and their dependencies).
func (l *Lock) check(resolved []Package, index []byte, unlocked func(Package) bool) error {
	offered := map[string][]Package{}
	for _, para := range bytes.Split(index, []byte("\n\n")) {
		f := parseFields(para)
		if f["Package"] == "" || f["Version"] == "" {
			continue
		}
		k := lockKey(f["Package"], f["Architecture"])
		offered[k] = append(offered[k], Package{Package: manifest.Package{Version: f["Version"], SHA256: f["SHA256"]}})
	}
	var problems []string
	for _, p := range resolved {
		k := lockKey(p.Name, p.Arch)
		want, ok := l.entries[k]
		switch {
		case !ok && unlocked != nil && unlocked(p):
		case !ok:
			problems = append(problems, fmt.Sprintf("%s %s is not in the lock file (a new dependency?)", k, p.Version))
		case want.Version != p.Version:
			var versions []string
			has := false
			for _, o := range offered[k] {
				versions = append(versions, o.Version)
				has = has || o.Version == want.Version
			}
			if has {
				problems = append(problems, fmt.Sprintf("%s: locked %s, but apt resolved %s although the archive offers the locked version (a dependency conflict?)", k, want.Version, p.Version))
				continue
			}
			if len(versions) == 0 {
				versions = []string{p.Version}
			}
			problems = append(problems, fmt.Sprintf("%s: locked version %s is no longer in the archive, which offers %s", k, want.Version, strings.Join(versions, ", ")))
		case want.SHA256 != p.SHA256:
			problems = append(problems, fmt.Sprintf("%s %s: the archive's index says sha256 %s, the lock file %s (the same version rebuilt?)", k, p.Version, p.SHA256, want.SHA256))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w:\n  %s\nRun `make lock` (pgwasm image lock) to lock what the archive offers now, review the diff, and commit it", ErrLockMismatch, strings.Join(problems, "\n  "))
}

// ErrLockMismatch says the archive no longer offers what the lock file names.
var ErrLockMismatch = errors.New("the Debian archive does not offer the locked packages")

// checkResolved checks a resolution against the lock, asking apt for the
// offered versions of the packages that differ.
func (a *Apt) checkResolved(ctx context.Context, pkgs []Package) error {
	if a.Lock == nil {
		return nil
	}
	err := a.Lock.check(pkgs, nil, a.Unlocked)
	if err == nil {
		return nil
	}
	var names []string
	for _, p := range pkgs {
		if want, ok := a.Lock.entries[lockKey(p.Name, p.Arch)]; ok && want.Version != p.Version {
			names = append(names, p.Name+":"+p.Arch)
		}
	}
	if len(names) == 0 {
		return err
	}
	index, ierr := a.run(ctx, "apt-cache", append([]string{"show", "--all-versions"}, names...)...)
	if ierr != nil {
		return err
	}
	return a.Lock.check(pkgs, index, a.Unlocked)
}

// preferencesFile writes the lock's pins for one apt call and returns the
// option that points apt at them.
func (a *Apt) preferencesFile() (opt []string, cleanup func(), err error) {
	if a.Lock == nil {
		return nil, func() {}, nil
	}
	f, err := os.CreateTemp(a.Dir, "lock-*.pref")
	if err != nil {
		return nil, nil, fmt.Errorf("cannot write apt preferences for the lock: %w", err)
	}
	_, err = f.WriteString(a.Lock.preferences())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, nil, fmt.Errorf("cannot write apt preferences for the lock: %w", err)
	}
	return []string{"-o", "Dir::Etc::preferences=" + f.Name()}, func() { os.Remove(f.Name()) }, nil
}

// ReadLockFile reads a lock file from disk.
func ReadLockFile(path string) (*Lock, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	l, err := ParseLock(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return l, nil
}
