package cpio

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/testkit"
	ucpio "github.com/u-root/u-root/pkg/cpio"
)

var golden = testkit.NewGolden("testdata")

// TestMain fails the run when a golden file in testdata is used by no test,
// so renamed or deleted tests do not leave stale snapshots behind.
func TestMain(m *testing.M) { os.Exit(golden.Run(m)) }

// readBack decodes an archive with u-root's reader and turns its records
// back into entries, checking the header fields Write promises to fix.
func readBack(t testing.TB, archive []byte, mtime uint32) []Entry {
	t.Helper()
	recs, err := ucpio.ReadAllRecords(ucpio.EOFReader{RecordReader: ucpio.Newc.Reader(bytes.NewReader(archive))})
	if err != nil {
		t.Fatalf("reading archive back: %v", err)
	}
	var out []Entry
	for i, r := range recs {
		if r.Ino != uint64(i+1) || r.MTime != uint64(mtime) {
			t.Errorf("%s: ino %d mtime %d, want %d and %d", r.Name, r.Ino, r.MTime, i+1, mtime)
		}
		data, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			t.Fatalf("reading %s: %v", r.Name, err)
		}
		e := Entry{Path: r.Name, Mode: uint32(r.Mode), UID: uint32(r.UID), GID: uint32(r.GID),
			Major: uint32(r.Rmajor), Minor: uint32(r.Rminor)}
		switch e.Mode & TypeMask {
		case TypeFile:
			e.Data = data
		case TypeLink:
			e.Target = string(data)
		default:
			if len(data) != 0 {
				t.Errorf("%s: %d bytes of data on a non-file", r.Name, len(data))
			}
		}
		out = append(out, e)
	}
	return out
}

func sample() []Entry {
	return []Entry{
		File("init", 0o755, []byte("#!/bin/sh\nexec /bin/sh\n")),
		CharDev("/dev/console", 0o600, 5, 1),
		CharDev("dev/null", 0o666, 1, 3),
		Symlink("bin/sh", "busybox"),
		File("bin/busybox", 0o755, []byte("\x7fELF not really")),
		Dir("dev", 0o755),
		{Path: "etc/shadow", Mode: TypeFile | 0o640, UID: 0, GID: 42, Data: []byte("root:*:1:0:99999:7:::\n")},
		File("etc/empty", 0o644, []byte{}),
		{Path: "tmp", Mode: TypeDir | 0o1777},
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		entries []Entry
		opts    Options
		want    []Entry
	}{
		{
			name:    "empty archive",
			entries: nil,
		},
		{
			name:    "parents added, sorted",
			entries: []Entry{File("a/b/c", 0o600, []byte("x")), Symlink("a/l", "b/c")},
			opts:    Options{MTime: 1700000000},
			want: []Entry{
				Dir("a", 0o755), Dir("a/b", 0o755), File("a/b/c", 0o600, []byte("x")), Symlink("a/l", "b/c"),
			},
		},
		{
			name:    "initramfs shaped",
			entries: sample(),
			opts:    Options{Gzip: true, MTime: 7},
			want: []Entry{
				Dir("bin", 0o755),
				File("bin/busybox", 0o755, []byte("\x7fELF not really")),
				Symlink("bin/sh", "busybox"),
				Dir("dev", 0o755),
				CharDev("dev/console", 0o600, 5, 1),
				CharDev("dev/null", 0o666, 1, 3),
				Dir("etc", 0o755),
				File("etc/empty", 0o644, []byte{}),
				{Path: "etc/shadow", Mode: TypeFile | 0o640, GID: 42, Data: []byte("root:*:1:0:99999:7:::\n")},
				File("init", 0o755, []byte("#!/bin/sh\nexec /bin/sh\n")),
				{Path: "tmp", Mode: TypeDir | 0o1777},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Write(&buf, tt.entries, tt.opts); err != nil {
				t.Fatalf("Write: %v", err)
			}
			raw := buf.Bytes()
			if tt.opts.Gzip {
				raw = gunzip(t, raw)
			}
			if got := readBack(t, raw, tt.opts.MTime); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("read back:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("gzip header: %v", err)
	}
	if zr.Name != "" || zr.Comment != "" || !zr.ModTime.IsZero() || zr.Extra != nil {
		t.Errorf("gzip header carries build details: %+v", zr.Header)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	return out
}

func TestGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, sample(), Options{MTime: 1234567890}); err != nil {
		t.Fatalf("Write: %v", err)
	}
	golden.Check(t, "initramfs.cpio.golden", buf.Bytes())
}

func TestDeterministic(t *testing.T) {
	for _, gz := range []bool{false, true} {
		var first []byte
		for run := 0; run < 5; run++ {
			entries := sample()
			rand.New(rand.NewSource(int64(run))).Shuffle(len(entries), func(i, j int) {
				entries[i], entries[j] = entries[j], entries[i]
			})
			var buf bytes.Buffer
			if err := Write(&buf, entries, Options{Gzip: gz}); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if run == 0 {
				first = buf.Bytes()
			} else if !bytes.Equal(buf.Bytes(), first) {
				t.Fatalf("gzip=%v: run %d differs from run 0", gz, run)
			}
		}
	}
}

func TestWriteRejects(t *testing.T) {
	tests := []struct {
		name    string
		entries []Entry
		want    string
	}{
		{"empty path", []Entry{File("/", 0o644, nil)}, "invalid cpio path"},
		{"dot dot", []Entry{File("a/../b", 0o644, nil)}, "invalid cpio path"},
		{"dot", []Entry{File("./a", 0o644, nil)}, "invalid cpio path"},
		{"double slash", []Entry{File("a//b", 0o644, nil)}, "invalid cpio path"},
		{"nul", []Entry{File("a\x00b", 0o644, nil)}, "invalid cpio path"},
		{"trailer name", []Entry{File(ucpio.Trailer, 0o644, nil)}, "reserved"},
		{"duplicate", []Entry{File("a", 0o644, nil), Dir("/a/", 0o755)}, "twice"},
		{"parent is file", []Entry{File("a", 0o644, nil), File("a/b", 0o644, nil)}, "not a directory"},
		{"no type", []Entry{{Path: "a", Mode: 0o644}}, "no valid file type"},
		{"stray bits", []Entry{{Path: "a", Mode: 0o1100644}}, "unknown bits"},
		{"data on dir", []Entry{{Path: "a", Mode: TypeDir | 0o755, Data: []byte("x")}}, "only regular files"},
		{"symlink without target", []Entry{{Path: "a", Mode: TypeLink | 0o777}}, "needs a target"},
		{"target on file", []Entry{{Path: "a", Mode: TypeFile | 0o644, Target: "b"}}, "needs a target"},
		{"device numbers on file", []Entry{{Path: "a", Mode: TypeFile | 0o644, Major: 1}}, "device numbers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Write(io.Discard, tt.entries, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Write(%+v) = %v, want error containing %q", tt.entries, err, tt.want)
			}
		})
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after < len(p) {
		return 0, errors.New("disk full")
	}
	f.after -= len(p)
	return len(p), nil
}

func TestWriteReportsWriterError(t *testing.T) {
	big := File("big", 0o644, bytes.Repeat([]byte("x"), 1<<16))
	for _, gz := range []bool{false, true} {
		err := Write(&failWriter{after: 100}, []Entry{big}, Options{Gzip: gz})
		if err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("gzip=%v: Write to a failing writer = %v, want disk full", gz, err)
		}
	}
}

func TestTreeEntries(t *testing.T) {
	dir := t.TempDir()
	mustWrite := func(rel string, data string, perm os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("bin/busybox", "elf", 0o755)
	mustWrite("etc/empty", "", 0o600)
	if err := os.Symlink("busybox", filepath.Join(dir, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "bin/busybox"), filepath.Join(dir, "bin/hard")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "etc"), 0o750); err != nil {
		t.Fatal(err)
	}
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	own := func(e Entry) Entry { e.UID, e.GID = uid, gid; return e }
	want := []Entry{
		own(Dir("root/bin", 0o755)),
		own(File("root/bin/busybox", 0o755, []byte("elf"))),
		own(File("root/bin/hard", 0o755, []byte("elf"))),
		own(Symlink("root/bin/sh", "busybox")),
		own(Dir("root/etc", 0o750)),
		own(File("root/etc/empty", 0o600, []byte{})),
	}
	// mknod needs privileges the test may not have; cover devices when it can.
	if err := syscall.Mknod(filepath.Join(dir, "console"), syscall.S_IFCHR|0o600, 5<<8|1); err == nil {
		want = append(want[:4], append([]Entry{own(CharDev("root/console", 0o600, 5, 1))}, want[4:]...)...)
	} else {
		t.Logf("no device node in the tree: %v", err)
	}
	got, err := TreeEntries(dir, "/root/")
	if err != nil {
		t.Fatalf("TreeEntries: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("TreeEntries:\n got %+v\nwant %+v", got, want)
	}

	var a, b bytes.Buffer
	if err := Write(&a, got, Options{}); err != nil {
		t.Fatal(err)
	}
	// Host mtimes must not reach the archive.
	if err := os.Chtimes(filepath.Join(dir, "bin/busybox"), time0, time0); err != nil {
		t.Fatal(err)
	}
	again, err := TreeEntries(dir, "/root/")
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, again, Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("archive changed after touching a host file's mtime")
	}
}

func TestTreeEntriesMissingDir(t *testing.T) {
	if _, err := TreeEntries(filepath.Join(t.TempDir(), "nope"), ""); err == nil {
		t.Error("TreeEntries on a missing directory succeeded")
	}
}

func FuzzWriteRead(f *testing.F) {
	f.Add("init", uint32(0o100755), []byte("#!/bin/sh\n"), "", "dev/console", uint32(0o20600), uint32(5), uint32(1))
	f.Add("a/b/c", uint32(0o120777), []byte(nil), "../x", "a", uint32(0o40700), uint32(0), uint32(0))
	f.Add("x", uint32(0o100644), []byte{}, "", "x/y", uint32(0o100644), uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, p1 string, m1 uint32, data []byte, target, p2 string, m2, major, minor uint32) {
		e1 := Entry{Path: p1, Mode: m1, Data: data, Target: target}
		e2 := Entry{Path: p2, Mode: m2, Major: major, Minor: minor}
		entries := []Entry{e1, e2}
		want, normErr := normalize(entries)
		var buf bytes.Buffer
		err := Write(&buf, entries, Options{MTime: m1})
		if (err == nil) != (normErr == nil) {
			t.Fatalf("Write error %v, normalize error %v", err, normErr)
		}
		if err != nil {
			return
		}
		got := readBack(t, buf.Bytes(), m1)
		for i := range want {
			if want[i].Mode&TypeMask == TypeFile && want[i].Data == nil {
				want[i].Data = []byte{}
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("read back:\n got %+v\nwant %+v", got, want)
		}
	})
}

var time0 = time.Unix(0, 0)
