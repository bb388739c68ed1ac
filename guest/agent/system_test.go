package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

func readCounter(t *testing.T, path string) uint32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 4 {
		t.Fatalf("%s has %d bytes, want the 4 the server made", path, len(b))
	}
	return binary.NativeEndian.Uint32(b)
}

// The counter's file as the pgwasm module leaves it: made by the server
// (4 bytes, zero) and bumped by one on each call, wrapping around; no file
// means no server has started, which is no error.
func TestReseedSessions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgwasm.reseed")
	if err := reseedSessions(path); err != nil {
		t.Fatalf("no file: %v, want nothing to do", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("reseedSessions created %s (%v): only the server may", path, err)
	}
	if err := reseedSessions(""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, make([]byte, 4), 0o600); err != nil {
		t.Fatal(err)
	}
	for want := uint32(1); want <= 3; want++ {
		if err := reseedSessions(path); err != nil {
			t.Fatal(err)
		}
		if got := readCounter(t, path); got != want {
			t.Fatalf("counter = %d, want %d", got, want)
		}
	}
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, ^uint32(0))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := reseedSessions(path); err != nil {
		t.Fatal(err)
	}
	if got := readCounter(t, path); got != 0 {
		t.Fatalf("counter = %d after wrapping, want 0", got)
	}
}
