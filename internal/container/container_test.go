package container

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// buildStatic builds cmd/pgwasm as the Makefile's container target does.
func buildStatic(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "pgwasm")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "../../cmd/pgwasm")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// fakeVMImage writes a small stand-in for build/image: serve only serves
// the files, so their content does not matter here.
func fakeVMImage(t *testing.T, dir string) {
	t.Helper()
	files := map[string]string{
		"manifest.json":     `{"test":"container"}`,
		"bzImage":           "kernel",
		"state-128.bin.zst": "snapshot",
		"9p/ab/cdef":        "a 9p file",
		"9p/bin/tool":       "#!/bin/sh\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "9p/bin/tool"), 0o755)
	if err := os.Symlink("ab/cdef", filepath.Join(dir, "9p/link")); err != nil {
		t.Fatal(err)
	}
}

// disturb changes everything about the VM image files that must not reach
// the image: times, owners (as root), permission bits other than "is
// executable".
func disturb(t *testing.T, dir string) {
	t.Helper()
	later := time.Now().Add(time.Hour)
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.Type()&os.ModeSymlink != 0 {
			return err
		}
		if os.Getuid() == 0 {
			if err := os.Chown(p, 4242, 4343); err != nil {
				t.Fatal(err)
			}
		}
		if !d.IsDir() {
			info, _ := d.Info()
			mode := os.FileMode(0o600)
			if info.Mode()&0o111 != 0 {
				mode = 0o700
			}
			os.Chmod(p, mode)
		} else {
			os.Chmod(p, 0o700)
		}
		return os.Chtimes(p, later, later)
	})
}

func build(t *testing.T, opts Options, out string) v1.Hash {
	t.Helper()
	img, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	d, err := WriteLayout(out, "pgwasm:test", img)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestContainerImage builds the image twice (the VM image's files touched,
// chmod-ed and chown-ed in between) and wants the same digest, then a
// different one for different content; then reads the layout back,
// checks the config, unpacks the layers and runs the binary from them as
// a non-root user: /healthz answers and the baked VM image is served.
func TestContainerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds pgwasm: skipped with -short")
	}
	work := t.TempDir()
	bin := buildStatic(t, work)
	vmImage := filepath.Join(work, "vm")
	fakeVMImage(t, vmImage)
	opts := Options{Binary: bin, VMImage: vmImage}

	first := build(t, opts, filepath.Join(work, "first"))
	disturb(t, vmImage)
	second := build(t, opts, filepath.Join(work, "second"))
	if first != second {
		t.Fatalf("same inputs, different digests: %s and %s", first, second)
	}
	// Writing over a layout replaces it and gives the same digest again.
	if again := build(t, opts, filepath.Join(work, "second")); again != first {
		t.Fatalf("rewritten layout: digest %s, want %s", again, first)
	}
	os.WriteFile(filepath.Join(vmImage, "9p/ab/cdef"), []byte("another 9p file"), 0o644)
	if changed := build(t, opts, filepath.Join(work, "changed")); changed == first {
		t.Fatalf("a changed VM image file kept the digest %s", first)
	}
	os.WriteFile(filepath.Join(vmImage, "9p/ab/cdef"), []byte("a 9p file"), 0o644)
	if _, err := WriteLayout(vmImage, "x", nil); err == nil {
		t.Fatal("WriteLayout replaced a directory that is no OCI layout")
	}
	if _, err := Build(Options{Binary: "/bin/sh", VMImage: vmImage}); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("a dynamic binary: %v, want refused", err)
	}

	// Read the layout back as a registry client would.
	idx, err := layout.ImageIndexFromPath(filepath.Join(work, "first"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != first || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "pgwasm:test" {
		t.Fatalf("index: %+v", im.Manifests)
	}
	img, err := idx.Image(first)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("the layout's image does not validate: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	uid, err := strconv.Atoi(strings.Split(cfg.User, ":")[0])
	if err != nil || uid == 0 {
		t.Errorf("User %q: want a numeric non-root uid", cfg.User)
	}
	if !slices.Equal(cfg.Entrypoint, []string{Entrypoint}) || !slices.Equal(cfg.Cmd, []string{"serve"}) {
		t.Errorf("Entrypoint %v Cmd %v", cfg.Entrypoint, cfg.Cmd)
	}
	if _, ok := cfg.ExposedPorts[HTTPPort]; !ok || len(cfg.ExposedPorts) != 2 {
		t.Errorf("ExposedPorts %v", cfg.ExposedPorts)
	}
	if _, ok := cfg.ExposedPorts[SNIPort]; !ok {
		t.Errorf("ExposedPorts %v", cfg.ExposedPorts)
	}
	sum := sha256.Sum256([]byte(`{"test":"container"}`))
	if cfg.Labels["io.pgwasm.vm-image.manifest-sha256"] != hex.EncodeToString(sum[:]) || cfg.Labels["org.opencontainers.image.title"] != "pgwasm" {
		t.Errorf("Labels %v", cfg.Labels)
	}
	if !cf.Created.Time.Equal(time.Unix(0, 0)) || cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("created %v, platform %s/%s", cf.Created, cf.OS, cf.Architecture)
	}

	root := filepath.Join(work, "rootfs")
	unpack(t, img, root)
	for _, f := range []string{"manifest.json", "9p/ab/cdef", "9p/bin/tool"} {
		want, _ := os.ReadFile(filepath.Join(vmImage, f))
		got, err := os.ReadFile(filepath.Join(root, ImageDir, f))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s in the image: %q, %v; want %q", f, got, err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(root, ImageDir, "9p/link")); err != nil || target != "ab/cdef" {
		t.Errorf("symlink in the image: %q, %v", target, err)
	}

	runFromRootfs(t, root, cf, uid)
}

// unpack extracts the image's file system into dir and checks that no
// entry carries the build host's owners or times.
func unpack(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: owner %d:%d (%q:%q), time %v: the build host leaks into the image", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
		p := filepath.Join(dir, h.Name)
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("entry %q outside the root", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
			if err == nil {
				err = os.Chmod(p, os.FileMode(h.Mode).Perm()|modeSticky(h.Mode))
			}
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(h.Mode).Perm()); err == nil {
				_, err = io.Copy(f, tr)
				f.Close()
			}
		default:
			err = fmt.Errorf("unexpected entry type %c", h.Typeflag)
		}
		if err != nil {
			t.Fatalf("unpack %s: %v", h.Name, err)
		}
	}
}

func modeSticky(m int64) os.FileMode {
	if m&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

// runFromRootfs starts the image's entry point with its environment. As
// root, it runs chrooted into the unpacked layers as the image's user: the
// binary has nothing but what the image holds. Otherwise (no chroot) it
// runs as the current user with --image pointing into the layers.
func runFromRootfs(t *testing.T, root string, cf *v1.ConfigFile, uid int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	args := append(cf.Config.Cmd[1:], "--listen", addr, "--tunnel-ports", "off", "--tunnel-sni-listen", "off", "--dns", "127.0.0.1:1")
	var cmd *exec.Cmd
	if os.Getuid() == 0 {
		// The user must reach the root through the test's 0700 temp dirs.
		for p := root; p != "/"; p = filepath.Dir(p) {
			info, err := os.Stat(p)
			if err == nil && info.Mode().Perm()&0o005 != 0o005 {
				os.Chmod(p, info.Mode().Perm()|0o005)
			}
		}
		cmd = exec.Command(cf.Config.Entrypoint[0], append([]string{cf.Config.Cmd[0]}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		cmd.Dir = "/"
	} else {
		cmd = exec.Command(filepath.Join(root, cf.Config.Entrypoint[0]), append([]string{cf.Config.Cmd[0], "--image", filepath.Join(root, ImageDir)}, args...)...)
		uid = os.Getuid()
	}
	cmd.Env = cf.Config.Env
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s from the unpacked image: %v", cf.Config.Entrypoint[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("serve's log:\n%s", log.String())
		}
	}()
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" && f[1] != strconv.Itoa(uid) {
			t.Errorf("serve runs as uid %s, want %d", f[1], uid)
		}
	}
	get := func(path string) (int, string, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, body, err := get("/healthz")
		if err == nil && code == 200 {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("serve from the unpacked image exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz: %d %q %v", code, body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body, err := get("/image/manifest.json"); code != 200 || body != `{"test":"container"}` {
		t.Errorf("the baked VM image through serve: %d %q %v", code, body, err)
	}
}
