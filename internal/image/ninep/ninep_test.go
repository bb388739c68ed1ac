package ninep

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
	"github.com/pgwasm/pgwasm/internal/testkit"
)

var golden = testkit.NewGolden("testdata")

// TestMain fails the run when a golden file in testdata is used by no test.
func TestMain(m *testing.M) { os.Exit(golden.Run(m)) }

// buildTree makes a small root tree covering every case Write handles. It is
// built at test time because Git keeps no owners, modes or special files.
func buildTree(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("building the test tree needs root for its device node")
	}
	root := filepath.Join(t.TempDir(), "root")
	// syscall.Chmod takes Unix bits; os.Chmod would drop setuid and sticky
	// given as 0o4000 and 0o1000.
	file := func(rel, data string, perm uint32) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	random := make([]byte, 4096)
	rand.New(rand.NewSource(1)).Read(random)

	file("etc/hostname", "pgwasm\n", 0o644)
	file("etc/hostname.copy", "pgwasm\n", 0o644)
	file("etc/shadow", "root:*:1:0:::::\n", 0o640)
	file("usr/lib/big.txt", strings.Repeat("PostgreSQL in a browser tab. ", 4000), 0o644)
	file("usr/bin/rand", string(random), 0o4755)
	must(os.Link(filepath.Join(root, "usr/bin/rand"), filepath.Join(root, "usr/bin/rand.hard")))
	file("var/empty", "", 0o600)
	file("var/lib/postgresql/data/PG_VERSION", "17\n", 0o600)
	must(os.Chmod(filepath.Join(root, "var/lib/postgresql/data"), 0o700))
	file("usr/share/doc/README", "excluded\n", 0o644)
	file("odd/a<b&c \"q\"", "html and quotes\n", 0o644)
	must(os.Symlink("usr/bin", filepath.Join(root, "bin")))
	must(os.Symlink("hostname", filepath.Join(root, "etc/link")))
	must(os.Symlink("/nowhere", filepath.Join(root, "etc/dangling")))
	must(os.MkdirAll(filepath.Join(root, "tmp"), 0o755))
	must(syscall.Chmod(filepath.Join(root, "tmp"), 0o1777))
	must(syscall.Mkfifo(filepath.Join(root, "tmp/fifo"), 0o600))
	must(syscall.Mknod(filepath.Join(root, "tmp/null"), syscall.S_IFCHR|0o666, 1<<8|3))
	must(os.WriteFile(filepath.Join(root, "bad\xffname"), nil, 0o644))
	// Host mtimes differ between runs; Write must not carry them over.
	now := time.Now()
	must(os.Chtimes(filepath.Join(root, "etc/hostname"), now, now))
	return root
}

// treeMeta gives buildTree's owners, as the image pipeline does: from the
// packages' headers, never from the host file system.
var treeMeta = rootfs.Metas{
	"etc/shadow":                         {UID: 0, GID: 42, Mode: 0o640},
	"var/lib/postgresql":                 {UID: 101, GID: 103, Mode: 0o755},
	"var/lib/postgresql/data":            {UID: 101, GID: 103, Mode: 0o700},
	"var/lib/postgresql/data/PG_VERSION": {UID: 101, GID: 103, Mode: 0o600},
}

func excludeDocs(p string) bool { return p == "/usr/share/doc" }

func writeTree(t *testing.T, root string, opts Options) (string, Stats) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "9p")
	if opts.Meta == nil {
		opts.Meta = treeMeta
	}
	stats, err := Write(context.Background(), root, out, opts)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return out, stats
}

func TestGolden(t *testing.T) {
	// Claimed first: buildTree skips the test without root.
	golden.Claim("tree.fs.json.golden", "tree.stats.golden")
	root := buildTree(t)
	out, stats := writeTree(t, root, Options{MTime: 1700000000, Exclude: excludeDocs})
	index, err := os.ReadFile(filepath.Join(out, IndexName))
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "tree.fs.json.golden", index)

	var summary bytes.Buffer
	skipped := stats.Skipped
	stats.Skipped = nil
	fmt.Fprintf(&summary, "%+v\n", stats)
	for _, s := range skipped {
		fmt.Fprintf(&summary, "skipped %q: %s\n", s.Path, s.Reason)
	}
	for _, name := range blobNames(t, out) {
		fmt.Fprintln(&summary, name)
	}
	golden.Check(t, "tree.stats.golden", summary.Bytes())

	var parsed struct {
		Fsroot  []any `json:"fsroot"`
		Version int   `json:"version"`
		Size    int64 `json:"size"`
	}
	if err := json.Unmarshal(index, &parsed); err != nil {
		t.Fatalf("fs.json is not JSON: %v", err)
	}
	if parsed.Version != Version || parsed.Size != stats.Bytes {
		t.Errorf("fs.json version %d size %d, want %d and %d", parsed.Version, parsed.Size, Version, stats.Bytes)
	}
}

func blobNames(t *testing.T, out string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(out, BlobDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestStats(t *testing.T) {
	root := buildTree(t)
	_, stats := writeTree(t, root, Options{Exclude: excludeDocs})
	want := Stats{
		Files: 9, Dirs: 11, Symlinks: 3, HardLinks: 1,
		Bytes:      int64(7 + 7 + 16 + 4000*29 + 4096*2 + 0 + 3 + 16),
		Blobs:      7, // the copy and the hard link share blobs
		Compressed: 1, // only big.txt shrinks
		Skipped: []Skipped{
			{Path: "/bad\xffname", Reason: "name is not valid UTF-8"},
			{Path: "/tmp/fifo", Reason: "fifo"},
			{Path: "/tmp/null", Reason: "character device"},
		},
	}
	if stats.BlobBytes <= 0 || stats.BlobBytes >= stats.Bytes {
		t.Errorf("BlobBytes = %d, want more than 0 and less than the %d content bytes", stats.BlobBytes, stats.Bytes)
	}
	stats.BlobBytes = 0
	if !reflect.DeepEqual(stats, want) {
		t.Errorf("Write stats:\n got %+v\nwant %+v", stats, want)
	}
}

func TestDeterministic(t *testing.T) {
	root := buildTree(t)
	out1, _ := writeTree(t, root, Options{MTime: 5})
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(root, "etc/hostname"), later, later); err != nil {
		t.Fatal(err)
	}
	out2, _ := writeTree(t, root, Options{MTime: 5})
	a, b := snapshotDir(t, out1), snapshotDir(t, out2)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("two writes of the same tree differ:\n%v\n%v", keys(a), keys(b))
	}
}

func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[rel] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func keys(m map[string]string) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	sort.Strings(k)
	return k
}

// TestBlobs checks every blob against its name: the hash is of the
// uncompressed content, and .bin.zst blobs decode with a stock decoder.
func TestBlobs(t *testing.T) {
	root := buildTree(t)
	tests := []struct {
		name    string
		level   int
		wantZst bool
	}{
		{"default level", 0, true},
		{"fastest", 1, true},
		{"uncompressed", -1, false},
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := writeTree(t, root, Options{ZstdLevel: tt.level})
			sawZst := false
			for _, name := range blobNames(t, out) {
				data, err := os.ReadFile(filepath.Join(out, BlobDir, name))
				if err != nil {
					t.Fatal(err)
				}
				base, isZst := strings.CutSuffix(name, ".bin.zst")
				if isZst {
					sawZst = true
					if data, err = dec.DecodeAll(data, nil); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
				} else {
					base = strings.TrimSuffix(name, ".bin")
				}
				sum := sha256.Sum256(data)
				if got := hex.EncodeToString(sum[:])[:len(base)]; got != base || len(base) != 8 {
					t.Errorf("%s holds content with sha256 %s", name, hex.EncodeToString(sum[:]))
				}
			}
			if sawZst != tt.wantZst {
				t.Errorf("level %d: .bin.zst blobs present = %v, want %v", tt.level, sawZst, tt.wantZst)
			}
		})
	}
}

func TestNameBlobsCollision(t *testing.T) {
	sum := func(s string) [sha256.Size]byte {
		var b [sha256.Size]byte
		hex.Decode(b[:], []byte(s+strings.Repeat("0", 64-len(s))))
		return b
	}
	a := &blob{sum: sum("deadbeef01")}
	b := &blob{sum: sum("deadbeef02")}
	c := &blob{sum: sum("cafe")}
	for _, order := range [][]*blob{{a, b, c}, {c, b, a}} {
		nameBlobs(order)
		want := []string{
			"deadbeef01" + strings.Repeat("0", 54),
			"deadbeef02" + strings.Repeat("0", 54),
			"cafe0000",
		}
		if got := []string{a.base, b.base, c.base}; !reflect.DeepEqual(got, want) {
			t.Errorf("nameBlobs = %q, want %q", got, want)
		}
	}
}

func TestWriteFailsCleanly(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	existing := t.TempDir()
	tests := []struct {
		name string
		ctx  context.Context
		root func(t *testing.T) string
		out  string
		want string
	}{
		{"missing root", context.Background(), func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }, "", "cannot read 9p root"},
		{"root is a file", context.Background(), func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "f")
			os.WriteFile(p, nil, 0o644)
			return p
		}, "", "not a directory"},
		{"output exists", context.Background(), func(t *testing.T) string { return t.TempDir() }, existing, "already exists"},
		{"canceled", canceled, func(t *testing.T) string {
			r := t.TempDir()
			os.WriteFile(filepath.Join(r, "f"), []byte("x"), 0o644)
			return r
		}, "", "context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			out := tt.out
			if out == "" {
				out = filepath.Join(parent, "9p")
			}
			_, err := Write(tt.ctx, tt.root(t), out, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Write = %v, want error containing %q", err, tt.want)
			}
			if tt.out == "" {
				left, _ := os.ReadDir(parent)
				if len(left) != 0 {
					t.Errorf("Write left %v behind after failing", left)
				}
			}
		})
	}
}

// TestV86Load loads a written tree into a real v86 under Node and reads files
// back through v86's own 9p code, including a zstd blob, an empty file and a
// path through a symlink, which v86's read_file does not follow.
func TestV86Load(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	repo := repoRoot(t)
	script := filepath.Join(repo, "harness", "ninep-check.mjs")
	if _, err := os.Stat(filepath.Join(repo, "harness", "node_modules", "v86")); err != nil {
		t.Skipf("v86 is not installed in harness/node_modules: %v", err)
	}
	root := buildTree(t)
	const mtime = 1700000000
	out, _ := writeTree(t, root, Options{MTime: mtime, Exclude: excludeDocs})
	if len(findBlobs(t, out, ".bin.zst")) == 0 {
		t.Fatal("tree has no .bin.zst blob to load")
	}

	paths := []string{
		"/etc/hostname", "/etc/shadow", "/usr/lib/big.txt", "/usr/bin/rand", "/usr/bin/rand.hard",
		"/var/empty", "/var/lib/postgresql/data/PG_VERSION", "/var/lib/postgresql/data",
		"/odd/a<b&c \"q\"", "/bin", "/etc/link", "/usr/share/doc", "/tmp/fifo",
	}
	cmd := exec.Command(node, append([]string{script, out}, paths...)...)
	cmd.Stderr = os.Stderr
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	type seen struct {
		Mode   uint32  `json:"mode"`
		UID    uint32  `json:"uid"`
		GID    uint32  `json:"gid"`
		MTime  int64   `json:"mtime"`
		Size   int64   `json:"size"`
		Read   *int64  `json:"read"`
		SHA256 string  `json:"sha256"`
		Target *string `json:"target"`
		Error  string  `json:"error"`
	}
	var got map[string]seen
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("bad output from %s: %v\n%s", script, err, raw)
	}
	for _, p := range paths {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: not reported", p)
			continue
		}
		host := filepath.Join(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(host, &st); err != nil {
			t.Fatal(err)
		}
		if excludeDocs(p) || p == "/tmp/fifo" {
			if g.Error != "not found" {
				t.Errorf("%s: v86 has %+v, want it left out", p, g)
			}
			continue
		}
		wantUID, wantGID := uint32(0), uint32(0)
		if m, ok := treeMeta[strings.TrimPrefix(p, "/")]; ok {
			wantUID, wantGID = m.UID, m.GID
		}
		if g.Mode != uint32(st.Mode) || g.UID != wantUID || g.GID != wantGID || g.MTime != mtime {
			t.Errorf("%s: v86 mode %#o uid %d gid %d mtime %d, want %#o %d %d %d",
				p, g.Mode, g.UID, g.GID, g.MTime, st.Mode, wantUID, wantGID, mtime)
		}
		switch st.Mode & typeMask {
		case typeLink:
			target, _ := os.Readlink(host)
			if g.Target == nil || *g.Target != target {
				t.Errorf("%s: v86 symlink target %v, want %q", p, g.Target, target)
			}
		case typeFile:
			data, err := os.ReadFile(host)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if g.SHA256 != hex.EncodeToString(sum[:]) || g.Read == nil || *g.Read != int64(len(data)) || g.Size != int64(len(data)) {
				t.Errorf("%s: v86 read %+v, want %d bytes with sha256 %x", p, g, len(data), sum)
			}
		}
	}
	// v86 does not resolve symlinks in paths: /bin/rand is only reachable
	// as /usr/bin/rand, which the guest kernel does for it.
	check := exec.Command(node, script, out, "/bin/rand")
	raw, err = check.Output()
	if err != nil || !strings.Contains(string(raw), `"error":"not found"`) {
		t.Errorf("/bin/rand through the symlink: %s %v, want not found", raw, err)
	}
}

func findBlobs(t *testing.T, out, suffix string) []string {
	var found []string
	for _, n := range blobNames(t, out) {
		if strings.HasSuffix(n, suffix) {
			found = append(found, n)
		}
	}
	return found
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}
