package extbuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// srcApt runs apt-get and apt-cache for source packages in a private state
// directory of its own (deb.Apt writes only deb lines).
type srcApt struct {
	dir, mirror, suite, keyring string
	maxAge                      time.Duration
	log                         *slog.Logger
}

// sourcePkg is one source package from the Sources index.
type sourcePkg struct {
	Name    string       `json:"name"`
	Version string       `json:"version"`
	Files   []sourceFile `json:"files"`
}

type sourceFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func (s *srcApt) sourcesList() string {
	return fmt.Sprintf("# written by pgwasm image build from the host's apt configuration\ndeb-src [signed-by=%s] %s %s main\n", s.keyring, s.mirror, s.suite)
}

func (s *srcApt) command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	cmd, err := hostexec.Command(ctx, name, append(deb.PrivateOptions(s.dir), args...)...)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	return cmd, nil
}

func (s *srcApt) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd, err := s.command(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, args[0], err, rootfs.Tail(out, 5))
	}
	return out, nil
}

// update fetches the Sources index unless a fresh one for the same sources
// list is there.
func (s *srcApt) update(ctx context.Context) error {
	for _, d := range []string{"state", "lists/partial", "cache/archives/partial", "preferences.d", "sources.list.d", "files"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return fmt.Errorf("cannot create the source apt state directory: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.dir, "status")); err != nil {
		if err := os.WriteFile(filepath.Join(s.dir, "status"), nil, 0o644); err != nil {
			return fmt.Errorf("cannot write the apt status file: %w", err)
		}
	}
	srcPath := filepath.Join(s.dir, "sources.list")
	want := s.sourcesList()
	stamp := filepath.Join(s.dir, "lists", ".updated")
	if old, _ := os.ReadFile(srcPath); string(old) == want {
		if st, err := os.Stat(stamp); err == nil && time.Since(st.ModTime()) < s.maxAge {
			return nil
		}
	}
	if err := os.WriteFile(srcPath, []byte(want), 0o644); err != nil {
		return fmt.Errorf("cannot write the private sources.list: %w", err)
	}
	os.Remove(stamp)
	s.log.Info("fetching the source index", "suite", s.suite)
	out, err := s.run(ctx, "apt-get", "update")
	if err != nil {
		return fmt.Errorf("cannot fetch the source index (is the Debian archive reachable?): %w", err)
	}
	if bytes.Contains(out, []byte("\nW: Failed to fetch")) || bytes.Contains(out, []byte("\nE: ")) {
		return fmt.Errorf("cannot fetch the source index: %s", rootfs.Tail(out, 5))
	}
	return os.WriteFile(stamp, nil, 0o644)
}

// find brings the Sources index up to date and looks the source package up
// in it.
func (s *srcApt) find(ctx context.Context, name string) (*sourcePkg, error) {
	if err := s.update(ctx); err != nil {
		return nil, err
	}
	return s.lookup(ctx, name)
}

// lookup reads a source package's newest version and file checksums from the
// signed Sources index.
func (s *srcApt) lookup(ctx context.Context, name string) (*sourcePkg, error) {
	out, err := s.run(ctx, "apt-cache", "showsrc", "--only-source", name)
	if err != nil {
		return nil, fmt.Errorf("cannot look up source package %s: %w", name, err)
	}
	pkgs := parseSources(out)
	var best *sourcePkg
	for i := range pkgs {
		p := &pkgs[i]
		if p.Name != name {
			continue
		}
		if best == nil {
			best = p
			continue
		}
		newer, err := versionGreater(ctx, p.Version, best.Version)
		if err != nil {
			return nil, err
		}
		if newer {
			best = p
		}
	}
	if best == nil {
		return nil, fmt.Errorf("source package %s is not in %s", name, s.suite)
	}
	if len(best.Files) == 0 {
		return nil, fmt.Errorf("source index has no SHA256 checksums for %s %s", name, best.Version)
	}
	return best, nil
}

// parseSources reads Package, Version and Checksums-Sha256 from Sources
// paragraphs (apt-cache showsrc output).
func parseSources(b []byte) []sourcePkg {
	var out []sourcePkg
	for _, para := range strings.Split(string(b), "\n\n") {
		var p sourcePkg
		inSums := false
		for _, line := range strings.Split(para, "\n") {
			if line == "" {
				continue
			}
			if line[0] == ' ' || line[0] == '\t' {
				if !inSums {
					continue
				}
				f := strings.Fields(line)
				if len(f) != 3 {
					continue
				}
				var size int64
				if _, err := fmt.Sscan(f[1], &size); err != nil {
					continue
				}
				p.Files = append(p.Files, sourceFile{Name: f[2], Size: size, SHA256: f[0]})
				continue
			}
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			inSums = k == "Checksums-Sha256"
			switch k {
			case "Package":
				p.Name = v
			case "Version":
				p.Version = v
			}
		}
		if p.Name != "" {
			out = append(out, p)
		}
	}
	return out
}

func versionGreater(ctx context.Context, a, b string) (bool, error) {
	cmd, err := hostexec.Command(ctx, "dpkg", "--compare-versions", a, "gt", b)
	if err != nil {
		return false, fmt.Errorf("cannot compare versions %s and %s: %w", a, b, err)
	}
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return false, nil
	default:
		return false, fmt.Errorf("cannot compare versions %s and %s: %w", a, b, err)
	}
}

// fetch downloads the source package's files into dir (unless they are
// there and intact) and checks each against the index's SHA256; files that
// fail are removed.
func (s *srcApt) fetch(ctx context.Context, p *sourcePkg, dir string) error {
	ok := true
	for _, f := range p.Files {
		if err := deb.VerifyFile(filepath.Join(dir, f.Name), f.SHA256); err != nil {
			os.Remove(filepath.Join(dir, f.Name))
			ok = false
		}
	}
	if !ok {
		s.log.Info("downloading source package", "version", p.Version)
		cmd, err := s.command(ctx, "apt-get", "source", "--download-only", p.Name+"="+p.Version)
		if err != nil {
			return err
		}
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cannot download source package %s %s: %w: %s", p.Name, p.Version, err, rootfs.Tail(out, 5))
		}
	}
	for _, f := range p.Files {
		path := filepath.Join(dir, f.Name)
		if err := deb.VerifyFile(path, f.SHA256); err != nil {
			os.Remove(path)
			return fmt.Errorf("source package %s %s: %w", p.Name, p.Version, err)
		}
	}
	return nil
}

// dscName is the .dsc among the source files.
func (p *sourcePkg) dscName() (string, error) {
	for _, f := range p.Files {
		if strings.HasSuffix(f.Name, ".dsc") {
			return f.Name, nil
		}
	}
	return "", fmt.Errorf("source package %s %s has no .dsc", p.Name, p.Version)
}

// unpackSource extracts the source package into dest (which must not exist)
// with dpkg-source, which checks the files against the .dsc and applies
// Debian's patches. The .dsc's own signature is not checked (the host has no
// maintainer keyring); the signed Sources index vouches for its checksum.
func unpackSource(ctx context.Context, p *sourcePkg, dir, dest string) error {
	dsc, err := p.dscName()
	if err != nil {
		return err
	}
	cmd, err := hostexec.Command(ctx, "dpkg-source", "--no-copy", "-x", filepath.Join(dir, dsc), dest)
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("dpkg-source is missing (install dpkg-dev): %w", err)
		}
		return err
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cannot unpack source package %s: %w: %s", dsc, err, rootfs.Tail(out, 5))
	}
	return nil
}

// localSource describes a recipe's Local tree as a source package: every
// regular file with its size and SHA256, sorted by path, and a version made
// from their hash, so any change to the tree is a new cache key.
func localSource(r Recipe) (*sourcePkg, error) {
	p := &sourcePkg{Name: r.Source}
	err := fs.WalkDir(r.Local, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", path)
		}
		b, err := fs.ReadFile(r.Local, path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		p.Files = append(p.Files, sourceFile{Name: path, Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read the source tree of %s: %w", r.Source, err)
	}
	if len(p.Files) == 0 {
		return nil, fmt.Errorf("the source tree of %s is empty", r.Source)
	}
	sort.Slice(p.Files, func(i, j int) bool { return p.Files[i].Name < p.Files[j].Name })
	h := sha256.New()
	for _, f := range p.Files {
		fmt.Fprintf(h, "%s %s\n", f.SHA256, f.Name)
	}
	p.Version = "src-" + hex.EncodeToString(h.Sum(nil))[:12]
	return p, nil
}

// copyLocal writes a Local tree into dest, which must not exist.
func copyLocal(fsys fs.FS, dest string) error {
	if err := os.Mkdir(dest, 0o755); err != nil {
		return fmt.Errorf("cannot create the source directory: %w", err)
	}
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == "." {
			return err
		}
		to := filepath.Join(dest, filepath.FromSlash(path))
		if d.IsDir() {
			return os.Mkdir(to, 0o755)
		}
		b, err := fs.ReadFile(fsys, path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o644)
	})
	if err != nil {
		return fmt.Errorf("cannot copy the source tree: %w", err)
	}
	return nil
}
