// An external test package: it imports the image pipeline, which imports
// kmod.
package kmod_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/image"
	"github.com/pgwasm/pgwasm/internal/image/kmod"
)

// realModules is an unpacked lib/modules/<version> of Debian's kernel:
// PGWASM_TEST_MODULES, or else the one the image pipeline downloads into
// PGWASM_TEST_CACHE_DIR (make test-go sets both; a cache where only
// --kernel source images were built holds no Debian kernel).
func realModules(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("PGWASM_TEST_MODULES"); dir != "" {
		return dir
	}
	cache := os.Getenv("PGWASM_TEST_CACHE_DIR")
	if cache == "" || testing.Short() {
		t.Skip("neither PGWASM_TEST_MODULES nor PGWASM_TEST_CACHE_DIR is set (make test-go sets them)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg := image.DefaultConfig()
	cfg.CacheDir = cache
	dir, err := image.DebianModules(ctx, cfg)
	if err != nil {
		t.Fatalf("cannot get Debian's kernel modules through the image pipeline: %v", err)
	}
	return dir
}

// The dependency logic is tested on the real Debian kernel's modules (the
// ELF parsing alone is covered by TestModInfoRejectsNonELF).
func TestResolveRealKernel(t *testing.T) {
	dir := realModules(t)
	mods, err := kmod.Resolve(dir, []string{"9p", "ne2k-pci"})
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
	if _, err := kmod.Resolve(dir, []string{"no-such-module"}); err == nil || !strings.Contains(err.Error(), "no kernel module") {
		t.Errorf("Resolve(unknown) = %v, want a clear error", err)
	}
}
