package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pgwasm/pgwasm/internal/image/deb"
)

// A damaged kernel cache (a module truncated by a full disk, say) is
// unpacked again from the verified package instead of going into an image.
func TestKernelTreeRepairsDamage(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed (make setup installs it)")
	}
	dir := t.TempDir()
	pkg := filepath.Join(dir, "pkg")
	for p, data := range map[string]string{
		"DEBIAN/control":             "Package: linux-image-test\nVersion: 1\nArchitecture: i386\nMaintainer: pgwasm <test@example.invalid>\nDescription: test\n",
		"boot/vmlinuz-1-686":         "kernel",
		"lib/modules/1-686/9p.ko":    "module 9p",
		"lib/modules/1-686/virtio.o": "module virtio",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(pkg, p)), 0o755)
		os.WriteFile(filepath.Join(pkg, p), []byte(data), 0o644)
	}
	debPath := filepath.Join(dir, "k.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkg, debPath).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v: %s", err, out)
	}
	kpkg := deb.Package{Name: "linux-image-test", Version: "1", Path: debPath}
	cache := filepath.Join(dir, "cache")
	ctx := context.Background()
	kdir, err := kernelTree(ctx, kpkg, cache)
	if err != nil {
		t.Fatal(err)
	}
	module := filepath.Join(kdir, "lib/modules/1-686/9p.ko")
	for name, damage := range map[string]func(){
		"truncated": func() { os.WriteFile(module, []byte("mod"), 0o644) },
		"missing":   func() { os.Remove(module) },
		"extra":     func() { os.WriteFile(module+".bak", nil, 0o644) },
	} {
		damage()
		if _, err := kernelTree(ctx, kpkg, cache); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b, err := os.ReadFile(module); err != nil || string(b) != "module 9p" {
			t.Errorf("%s: module after kernelTree = %q, %v; want it unpacked again", name, b, err)
		}
		if _, err := os.Stat(module + ".bak"); err == nil {
			t.Errorf("%s: a stray file survived", name)
		}
	}
}
