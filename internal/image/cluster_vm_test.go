package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/guest"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
	ucpio "github.com/u-root/u-root/pkg/cpio"
)

// TestVMStepGuestFailure boots, in real v86, a root that has busybox and
// the guest init but no PostgreSQL, so initdb fails inside the VM. The error
// must name the failed step and carry the guest's log, and the failure must
// leave no cache entry and the root as it was. It needs a built image's
// kernel, initramfs and BIOS: PGWASM_IMAGE=build/image.
func TestVMStepGuestFailure(t *testing.T) {
	img := os.Getenv("PGWASM_IMAGE")
	if img == "" {
		t.Skip("PGWASM_IMAGE is not set (a built image directory, for its kernel, initramfs and BIOS)")
	}
	t.Run("no_initdb", func(t *testing.T) {
		vmStepFailure(t, img, true, "initdb failed in the VM", "initdb: not found")
	})
	// Without an init the kernel panics: that must fail at once, not at the
	// step's timeout.
	t.Run("no_init", func(t *testing.T) {
		vmStepFailure(t, img, false, "VM step: the guest failed", "Kernel panic", "can't execute '/sbin/init'")
	})
}

func vmStepFailure(t *testing.T, img string, withInit bool, want ...string) {
	cfg, root, staged := testRoot(t)
	for _, f := range []string{"bzImage", "initrd.img", "bios.bin", "vgabios.bin"} {
		if err := copyFile(filepath.Join(img, f), filepath.Join(staged, f)); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string][]byte{
		"usr/bin/busybox": fromInitramfs(t, filepath.Join(img, "initrd.img"), "bin/busybox"),
		"etc/passwd":      []byte(etcFiles()["etc/passwd"]),
		"etc/group":       []byte(etcFiles()["etc/group"]),
	}
	if withInit {
		files["usr/sbin/init"] = guest.Init
	}
	for name, data := range files {
		if err := writeFile(filepath.Join(root, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "sbin"} {
		if err := os.Symlink("usr/"+d, filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m := rootfs.Metas{}
	t0 := time.Now()
	err := runInVM(ctx, cfg, root, staged, testKey, m)
	t.Logf("runInVM took %s: %v", time.Since(t0).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("runInVM succeeded")
	}
	for _, want := range want {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q", want)
		}
	}
	checkUntouched(t, cfg, root, m)
	if _, err := os.Stat(filepath.Join(filepath.Dir(staged), "vmstep")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the VM step's work directory is left: %v", err)
	}
}

// fromInitramfs returns one file of a gzip'd newc initramfs.
func fromInitramfs(t *testing.T, path, name string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	r := ucpio.Newc.Reader(bytes.NewReader(raw))
	for {
		rec, err := r.ReadRecord()
		if err != nil {
			t.Fatalf("%s has no %s: %v", path, name, err)
		}
		if rec.Name == name {
			data, err := io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize)))
			if err != nil {
				t.Fatal(err)
			}
			return data
		}
	}
}
