package testkit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestGoldenUnclaimed(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a.golden", "b.golden", "c.txt"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	g := NewGolden(dir)
	g.Check(t, "a.golden", []byte("x"))
	stale, err := g.unclaimed()
	if err != nil || len(stale) != 1 || filepath.Base(stale[0]) != "b.golden" {
		t.Fatalf("unclaimed = %v, %v; want only b.golden", stale, err)
	}
	g.Claim("b.golden")
	if stale, err := g.unclaimed(); err != nil || len(stale) != 0 {
		t.Fatalf("after Claim: unclaimed = %v, %v", stale, err)
	}
}

func TestGoldenMismatchFails(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.golden"), []byte("want"), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{TB: t}
	NewGolden(dir).Check(rec, "a.golden", []byte("got"))
	if !rec.failed {
		t.Fatal("a differing output did not fail the test")
	}
}

// recorder notes a failure instead of failing the test that uses it.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }
