package testkit

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Golden compares test output with files in a testdata directory.
// UPDATE_SNAPSHOTS=1 writes the files instead. Run fails a whole run that
// leaves a golden file unclaimed, so renamed or deleted tests do not leave
// stale files behind.
type Golden struct {
	dir  string
	mu   sync.Mutex
	used map[string]bool
}

// NewGolden keeps its files in dir (usually "testdata").
func NewGolden(dir string) *Golden {
	return &Golden{dir: dir, used: map[string]bool{}}
}

// Claim marks files as used. A test calls it before anything that can skip
// it (tests needing root, say), so a skipped test does not make its files
// look stale.
func (g *Golden) Claim(names ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, n := range names {
		g.used[n] = true
	}
}

// Check compares got with the golden file name.
func (g *Golden) Check(tb testing.TB, name string, got []byte) {
	tb.Helper()
	g.Claim(name)
	file := filepath.Join(g.dir, name)
	if os.Getenv("UPDATE_SNAPSHOTS") == "1" {
		if err := os.MkdirAll(g.dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(file, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		tb.Fatalf("%v (run with UPDATE_SNAPSHOTS=1 to create it)", err)
	}
	if !bytes.Equal(got, want) {
		tb.Errorf("output differs from %s (run with UPDATE_SNAPSHOTS=1 to accept):\n got %q\nwant %q", file, got, want)
	}
}

// Run runs the tests (call it from TestMain) and turns a passing run that
// used every test into a failure when a golden file was claimed by none.
func (g *Golden) Run(m *testing.M) int {
	flag.Parse()
	code := m.Run()
	if code != 0 || flag.Lookup("test.run").Value.String() != "" {
		return code
	}
	stale, err := g.unclaimed()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, f := range stale {
		fmt.Fprintln(os.Stderr, "golden file used by no test:", f)
		code = 1
	}
	return code
}

func (g *Golden) unclaimed() ([]string, error) {
	files, err := filepath.Glob(filepath.Join(g.dir, "*.golden"))
	if err != nil {
		return nil, fmt.Errorf("cannot list the golden files: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var stale []string
	for _, f := range files {
		if !g.used[filepath.Base(f)] {
			stale = append(stale, f)
		}
	}
	return stale, nil
}
