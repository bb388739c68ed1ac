package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/kernelbuild"
	"github.com/pgwasm/pgwasm/internal/manifest"
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
	kpkg := deb.Package{Package: manifest.Package{Name: "linux-image-test", Version: "1"}, Path: debPath}
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

func TestCheckKernel(t *testing.T) {
	for _, tc := range []struct {
		kernel, cmdline     string
		wantKind, wantStart string
		err                 string
	}{
		{kernel: "", wantKind: KernelSource, wantStart: DefaultCmdline(KernelSource)},
		{kernel: KernelDebian, wantKind: KernelDebian, wantStart: "console=ttyS0 "},
		{kernel: KernelSource, wantKind: KernelSource, wantStart: DefaultCmdline(KernelSource)},
		{kernel: KernelSource, cmdline: "console=ttyS0 debug", wantKind: KernelSource, wantStart: "console=ttyS0 debug"},
		{kernel: "vanilla", err: `unknown kernel "vanilla": want debian`},
	} {
		cfg := DefaultConfig()
		cfg.Kernel, cfg.Cmdline = tc.kernel, tc.cmdline
		err := checkKernel(&cfg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("checkKernel(%q) = %v, want an error containing %q", tc.kernel, err, tc.err)
			}
			continue
		}
		if err != nil || cfg.Kernel != tc.wantKind || !strings.HasPrefix(cfg.Cmdline, tc.wantStart) {
			t.Errorf("checkKernel(%q, %q) = %v, kernel %q, cmdline %q", tc.kernel, tc.cmdline, err, cfg.Kernel, cfg.Cmdline)
		}
	}
	// Our kernel has no initcalls to blacklist and no crypto self-tests:
	// Debian's switches would reach init as arguments.
	if strings.Contains(DefaultCmdline(KernelSource), "initcall_blacklist") || strings.Contains(DefaultCmdline(KernelSource), "noisapnp") {
		t.Errorf("our kernel's command line carries Debian's switches: %q", DefaultCmdline(KernelSource))
	}
}

// The kernel is part of both keys: the image's and the VM step's (which
// boots it). A Debian-kernel image's keys do not depend on the kernel
// source package that every build resolves for the lock.
func TestCacheKeysFollowTheKernel(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Cmdline = DefaultCmdline(KernelDebian)
	debian := &inputs{
		kernel:       deb.Package{Package: manifest.Package{Name: "linux-image-6.1.0-50-686", Version: "6.1.176-1", SHA256: strings.Repeat("1", 64)}},
		kernelSource: deb.Package{Package: manifest.Package{Name: "linux-source-6.1", Version: "6.1.176-1", SHA256: strings.Repeat("2", 64)}},
	}
	agent := []byte("agent")
	newerSource := *debian
	newerSource.kernelSource.Version = "6.1.177-1"
	if cacheKey(cfg, debian, agent) != cacheKey(cfg, &newerSource, agent) || vmStepKey(cfg, debian) != vmStepKey(cfg, &newerSource) {
		t.Error("a Debian-kernel image's key depends on the kernel source package it does not use")
	}
	ours := *debian
	ours.kernelBuild = &kernelbuild.Result{Key: "build-1"}
	rebuilt := ours
	rebuilt.kernelBuild = &kernelbuild.Result{Key: "build-2"}
	keys := map[string]string{}
	for name, k := range map[string]string{
		"debian": cacheKey(cfg, debian, agent), "ours": cacheKey(cfg, &ours, agent), "ours rebuilt": cacheKey(cfg, &rebuilt, agent),
		"vm debian": vmStepKey(cfg, debian), "vm ours": vmStepKey(cfg, &ours), "vm ours rebuilt": vmStepKey(cfg, &rebuilt),
	} {
		if other, dup := keys[k]; dup {
			t.Errorf("%s and %s have the same key", name, other)
		}
		keys[k] = name
	}
}
