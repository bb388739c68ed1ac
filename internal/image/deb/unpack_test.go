package deb

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// tarOf builds a data archive as dpkg-deb --fsys-tarfile prints one.
func tarOf(t testing.TB, entries []tar.Header, contents map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h := h
		data := contents[h.Name]
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(data))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestExtractKeepsOwnersAndModesInMeta(t *testing.T) {
	archive := tarOf(t, []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755},
		{Name: "./usr/bin/su2", Typeflag: tar.TypeLink, Linkname: "./usr/bin/su"},
		{Name: "./usr/bin/sudo-ish", Typeflag: tar.TypeSymlink, Linkname: "su"},
		{Name: "./var/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./var/spool/", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "./var/locked/", Typeflag: tar.TypeDir, Mode: 0o500, Uid: 999, Gid: 998},
		{Name: "./var/locked/secret", Typeflag: tar.TypeReg, Mode: 0o400, Uid: 999, Gid: 998},
	}, map[string]string{"./usr/bin/su": "binary", "./var/locked/secret": "s3cret"})
	root := t.TempDir()
	meta := rootfs.Metas{}
	if err := extract(tar.NewReader(bytes.NewReader(archive)), root, meta); err != nil {
		t.Fatal(err)
	}
	want := map[string]rootfs.Meta{
		"usr/bin/su":        {Mode: 0o755 | fs.ModeSetuid},
		"usr/bin/su2":       {Mode: 0o755 | fs.ModeSetuid},
		"var/spool":         {Mode: 0o777 | fs.ModeSticky},
		"var/locked":        {UID: 999, GID: 998, Mode: 0o500},
		"var/locked/secret": {UID: 999, GID: 998, Mode: 0o400},
	}
	for p, w := range want {
		if got, ok := meta[p]; !ok || got != w {
			t.Errorf("meta[%q] = %+v, %v; want %+v", p, got, ok, w)
		}
	}
	// The build user can read, fill and delete everything it unpacked.
	b, err := os.ReadFile(filepath.Join(root, "var/locked/secret"))
	if err != nil || string(b) != "s3cret" {
		t.Errorf("reading a 0400 file of another owner: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(root, "var/locked/new"), nil, 0o644); err != nil {
		t.Errorf("writing into a 0500 directory: %v", err)
	}
	if target, err := os.Readlink(filepath.Join(root, "usr/bin/sudo-ish")); err != nil || target != "su" {
		t.Errorf("symlink: %q, %v", target, err)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Errorf("removing the tree: %v", err)
	}
}

func TestExtractRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []tar.Header
	}{
		{"dotdot", []tar.Header{{Name: "./../evil", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{"deep dotdot", []tar.Header{{Name: "./usr/../../evil", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{"through a symlink", []tar.Header{
			{Name: "./out", Typeflag: tar.TypeSymlink, Linkname: "/tmp"},
			{Name: "./out/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		}},
		{"hard link out", []tar.Header{{Name: "./x", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			os.Mkdir(root, 0o755)
			err := extract(tar.NewReader(bytes.NewReader(tarOf(t, tt.entries, nil))), root, nil)
			if err == nil {
				t.Fatal("extract succeeded")
			}
			if _, err := os.Stat(filepath.Join(parent, "evil")); err == nil {
				t.Error("a file was written outside the root")
			}
			t.Logf("refusal reads: %v", err)
		})
	}
}

// buildDeb makes a real .deb with dpkg-deb, as an ordinary user can.
func buildDeb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed (make setup installs it)")
	}
	dir := t.TempDir()
	pkg := filepath.Join(dir, "pkg")
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: pgwasm-test\nVersion: 1\nArchitecture: i386\nMaintainer: pgwasm <test@example.invalid>\nDescription: test\n"), 0o644)
	os.MkdirAll(filepath.Join(pkg, "usr/share/ro"), 0o755)
	os.WriteFile(filepath.Join(pkg, "usr/share/ro/file"), []byte("hello"), 0o444)
	os.Chmod(filepath.Join(pkg, "usr/share/ro"), 0o555)
	t.Cleanup(func() { os.Chmod(filepath.Join(pkg, "usr/share/ro"), 0o755) })
	deb := filepath.Join(dir, "test.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zxz", "--build", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v: %s", err, out)
	}
	return deb
}

func TestUnpackRealDeb(t *testing.T) {
	deb := buildDeb(t)
	root := t.TempDir()
	meta := rootfs.Metas{}
	if err := Unpack(context.Background(), deb, root, meta); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "usr/share/ro/file")); err != nil || string(b) != "hello" {
		t.Fatalf("unpacked file: %q, %v", b, err)
	}
	if m := meta["usr/share/ro"]; m.Mode != 0o555 || m.UID != 0 {
		t.Errorf("meta of the read-only directory = %+v, want mode 0555 root", m)
	}
	if m := meta["usr/share/ro/file"]; m.Mode != 0o444 {
		t.Errorf("meta of the read-only file = %+v, want mode 0444", m)
	}
}

func TestUnpackBrokenDeb(t *testing.T) {
	deb := buildDeb(t)
	b, _ := os.ReadFile(deb)
	for name, data := range map[string][]byte{
		"truncated": b[:len(b)*2/3],
		"garbage":   []byte(strings.Repeat("not a deb ", 100)),
		"empty":     nil,
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "broken.deb")
			os.WriteFile(p, data, 0o644)
			err := Unpack(context.Background(), p, t.TempDir(), nil)
			if err == nil || !strings.Contains(err.Error(), "broken.deb") {
				t.Fatalf("Unpack(%s) = %v, want an error naming the file", name, err)
			}
			t.Logf("error reads: %v", err)
		})
	}
}

// FuzzExtract feeds arbitrary archives to extract: it may refuse them, but
// never write outside the root or panic.
func FuzzExtract(f *testing.F) {
	f.Add(tarOf(f, []tar.Header{{Name: "./a/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "./a/b", Typeflag: tar.TypeReg, Mode: 0o644}}, map[string]string{"./a/b": "x"}))
	f.Add(tarOf(f, []tar.Header{{Name: "./l", Typeflag: tar.TypeSymlink, Linkname: ".."}, {Name: "./l/x", Typeflag: tar.TypeReg}}, nil))
	f.Add(tarOf(f, []tar.Header{{Name: "./h", Typeflag: tar.TypeLink, Linkname: "./missing"}}, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent, err := os.MkdirTemp("", "fuzz-extract")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(parent)
		root := filepath.Join(parent, "root")
		os.Mkdir(root, 0o755)
		extract(tar.NewReader(bytes.NewReader(data)), root, rootfs.Metas{})
		entries, _ := os.ReadDir(parent)
		if len(entries) != 1 {
			t.Fatalf("extract wrote outside the root: %v", entries)
		}
	})
}
