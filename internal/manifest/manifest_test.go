package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/testkit"
)

// The manifest of an image built before this package existed reads and
// writes back byte for byte: the format did not change.
func TestImageRoundTrip(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("testdata", FileName))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Read("testdata")
	if err != nil {
		t.Fatal(err)
	}
	if m.PostgresVersion == "" || len(m.Packages) == 0 || len(m.AgentChannels) == 0 || m.FS.Files == 0 {
		t.Fatalf("fields lost in reading: %+v", m)
	}
	dir := t.TempDir()
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("written manifest differs from the one read (%d bytes, want %d)", len(got), len(want))
	}
	if _, err := os.Stat(filepath.Join(dir, FileName+".tmp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
}

func TestReadErrors(t *testing.T) {
	tests := []struct {
		name     string
		manifest string // "" writes none
		want     string
	}{
		{"missing", "", "pgwasm image build"},
		{"corrupt", "{", "is corrupt"},
		{"version", `{"version": 2, "key": "k"}`, "version 2, this pgwasm reads version 1"},
		{"no key", `{"version": 1}`, "has no key"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		if tt.manifest != "" {
			if err := os.WriteFile(filepath.Join(dir, FileName), []byte(tt.manifest), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		_, err := Read(dir)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Read = %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}

// A state's metadata as `pgwasm image snapshot` wrote it before reads and
// encodes back the same.
func TestStateRoundTrip(t *testing.T) {
	path := StatePath("testdata", 128)
	if want := filepath.Join("testdata", "state-128.bin.zst"); path != want {
		t.Fatalf("StatePath = %q, want %q", path, want)
	}
	m, err := ReadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if m.MemoryMB != 128 || m.VGAMemoryMB != VGAMemoryMB || m.ImageKey == "" {
		t.Errorf("ReadState = %+v", m)
	}
	want, err := os.ReadFile(MetaPath(path))
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(got, '\n'), want) {
		t.Errorf("state metadata encodes as\n%s\nwant\n%s", got, want)
	}
	if _, err := ReadState(StatePath(t.TempDir(), 128)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadState of a state without metadata = %v, want fs.ErrNotExist", err)
	}
}

func TestMetaPath(t *testing.T) {
	for in, want := range map[string]string{
		"/i/state-128.bin.zst": "/i/state-128.json",
		"/tmp/mine.zst":        "/tmp/mine.zst.json",
	} {
		if got := MetaPath(in); got != want {
			t.Errorf("MetaPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckMemory(t *testing.T) {
	tests := []struct {
		mb int
		ok bool
	}{
		{16, false}, {32, true}, {96, false}, {128, true}, {1024, true}, {2048, true}, {4096, false}, {0, false}, {-128, false},
	}
	for _, tt := range tests {
		if err := CheckMemory(tt.mb); (err == nil) != tt.ok {
			t.Errorf("CheckMemory(%d) = %v, want ok %v", tt.mb, err, tt.ok)
		}
	}
	sizes := MemorySizes()
	for i, mb := range sizes {
		if err := CheckMemory(mb); err != nil {
			t.Errorf("offered size: %v", err)
		}
		if i > 0 && mb <= sizes[i-1] {
			t.Errorf("MemorySizes %v not ascending", sizes)
		}
	}
	if sizes[0] != DefaultMemoryMB {
		t.Errorf("DefaultMemoryMB %d is not the smallest offered size %d", DefaultMemoryMB, sizes[0])
	}
}

// webMemoryRule is web/src/memory.ts: the memory rule for the page.
func webMemoryRule() []byte {
	var b bytes.Buffer
	sizes := fmt.Sprint(MemorySizes())
	fmt.Fprintf(&b, `// Code generated from internal/manifest/memory.go by TestWebMemoryRule; DO NOT EDIT.
// After changing the rule there: UPDATE_SNAPSHOTS=1 go test -run TestWebMemoryRule ./internal/manifest

// MEMORY_SIZES are the memory sizes the page offers (MB), smallest first.
export const MEMORY_SIZES = [%s];
// DEFAULT_MEMORY_MB is the memory size of a first start.
export const DEFAULT_MEMORY_MB = %d;
// VGA_MEMORY_MB is part of every state, so it never varies.
export const VGA_MEMORY_MB = %d;
`, strings.ReplaceAll(sizes[1:len(sizes)-1], " ", ", "), DefaultMemoryMB, VGAMemoryMB)
	return b.Bytes()
}

// web/src/memory.ts is the page's copy of the memory rule; it fails here
// when it is stale.
func TestWebMemoryRule(t *testing.T) {
	testkit.NewGolden(filepath.Join("..", "..", "web", "src")).Check(t, "memory.ts", webMemoryRule())
}
