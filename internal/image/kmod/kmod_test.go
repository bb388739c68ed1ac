package kmod

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The dependency logic is tested on the real Debian kernel's modules when a
// test run points PGWASM_TEST_MODULES at an unpacked lib/modules/<version>
// (make test-vm's image build does); the ELF parsing itself is covered by
// TestModInfoRejectsNonELF below.
func TestResolveRealKernel(t *testing.T) {
	dir := os.Getenv("PGWASM_TEST_MODULES")
	if dir == "" {
		t.Skip("PGWASM_TEST_MODULES not set")
	}
	mods, err := Resolve(dir, []string{"9p", "ne2k-pci"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range mods {
		pos[m.Name] = i
	}
	for _, m := range mods {
		for _, d := range m.Depends {
			if pos[d] >= pos[m.Name] {
				t.Errorf("%s is loaded at %d, before its dependency %s at %d", m.Name, pos[m.Name], d, pos[d])
			}
		}
	}
	for _, want := range []string{"9p", "9pnet", "netfs", "ne2k_pci", "8390"} {
		if _, ok := pos[want]; !ok {
			t.Errorf("Resolve lacks %s: %v", want, mods)
		}
	}
	if _, err := Resolve(dir, []string{"no-such-module"}); err == nil || !strings.Contains(err.Error(), "no kernel module") {
		t.Errorf("Resolve(unknown) = %v, want a clear error", err)
	}
}

func TestModInfoRejectsNonELF(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.ko")
	os.WriteFile(path, []byte("not an ELF file"), 0o644)
	if _, err := ModInfo(path); err == nil {
		t.Fatal("ModInfo(garbage) succeeded")
	}
}
