package deb

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// newTestApt uses the real Debian archive through the host's apt
// configuration (the package registry this machine and CI reach).
func newTestApt(t *testing.T) *Apt {
	t.Helper()
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get not installed")
	}
	mirror, err := MirrorFromHost("/etc/apt")
	if err != nil {
		t.Skipf("host has no Debian archive configured: %v", err)
	}
	return &Apt{
		Dir: t.TempDir(), Mirror: mirror, Suites: []string{"bookworm", "trixie"}, Arch: "i386",
		Keyring: "/usr/share/keyrings/debian-archive-keyring.gpg", MaxListAge: time.Hour,
		Logger: slog.New(slog.DiscardHandler),
	}
}

// resolveRealArchive updates a test apt from the real archive and resolves
// psql's closure: where the real-archive tests start.
func resolveRealArchive(t *testing.T) (*Apt, []Package) {
	t.Helper()
	if testing.Short() {
		t.Skip("downloads package lists")
	}
	a := newTestApt(t)
	ctx := context.Background()
	if err := a.Update(ctx); err != nil {
		t.Fatal(err)
	}
	pkgs, err := a.Resolve(ctx, []string{"postgresql-client-17"}, true)
	if err != nil {
		t.Fatal(err)
	}
	return a, pkgs
}

func TestResolveRealArchive(t *testing.T) {
	a, pkgs := resolveRealArchive(t)
	ctx := context.Background()
	names := map[string]Package{}
	for _, p := range pkgs {
		names[p.Name] = p
	}
	// libpq5 and libc6 are real dependencies of psql: the closure must have them.
	for _, want := range []string{"postgresql-client-17", "libpq5", "libc6"} {
		p, ok := names[want]
		if !ok {
			t.Fatalf("Resolve(postgresql-client-17) lacks %s; got %d packages", want, len(pkgs))
		}
		if p.Arch != "i386" && p.Arch != "all" || len(p.SHA256) != 64 {
			t.Fatalf("package %+v: want i386/all with a sha256", p)
		}
	}
	_, err := a.Resolve(ctx, []string{"no-such-package-pgwasm"}, true)
	if !errors.Is(err, ErrUnknownPackage) {
		t.Fatalf("Resolve(unknown) = %v, want ErrUnknownPackage", err)
	}

	// Fetch one small package, then corrupt it: a second Fetch must notice
	// and download it again instead of trusting the cached file.
	one := []Package{names["libpq5"]}
	if err := a.Fetch(ctx, one); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(one[0].Path, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Fetch(ctx, one); err != nil {
		t.Fatalf("Fetch after corruption: %v", err)
	}
	if err := VerifyFile(one[0].Path, one[0].SHA256); err != nil {
		t.Fatal(err)
	}
}

// A resolution is reused while the package lists are the same ones, and
// never once they changed or the cached answer is damaged. apt is kept off
// PATH: any call to it fails the Resolve.
func TestResolveCachedPerLists(t *testing.T) {
	a := &Apt{
		Dir: t.TempDir(), Mirror: "http://archive.invalid/debian", Suites: []string{"trixie"}, Arch: "i386",
		Keyring: "/nonexistent.gpg", Logger: slog.New(slog.DiscardHandler),
	}
	stamp := filepath.Join(a.Dir, "lists", ".updated")
	os.MkdirAll(filepath.Dir(stamp), 0o755)
	os.WriteFile(stamp, nil, 0o644)
	names := []string{"busybox-static"}
	want := []Package{{Package: manifest.Package{Name: "busybox-static", Version: "1:1.37.0-6", Arch: "i386", SHA256: strings.Repeat("ab", 32), Size: 10}}}
	key, err := a.resolveKey(names)
	if err != nil {
		t.Fatal(err)
	}
	a.storeResolve(key, want)
	t.Setenv("PATH", t.TempDir())
	ctx := context.Background()

	got, err := a.Resolve(ctx, names, true)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Resolve with a cached answer = %v, %v; want %v", got, err, want)
	}
	if _, err := a.Resolve(ctx, []string{"busybox-static", "zstd"}, true); err == nil {
		t.Error("Resolve of other names used the cached answer")
	}
	later := time.Now().Add(time.Hour)
	os.Chtimes(stamp, later, later)
	if _, err := a.Resolve(ctx, names, true); err == nil {
		t.Error("Resolve after new package lists used the old answer")
	}
	key, _ = a.resolveKey(names)
	os.WriteFile(a.resolvedPath(key), []byte(`[{"name":"busybox-static"`), 0o644)
	if _, err := a.Resolve(ctx, names, true); err == nil {
		t.Error("Resolve used a truncated cached answer")
	}
}
