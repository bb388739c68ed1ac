package vm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

// writeImage makes a minimal image directory whose files all exist.
func writeImage(t *testing.T, key string) *Image {
	t.Helper()
	dir := t.TempDir()
	m := map[string]any{
		"version": 1, "key": key, "cmdline": "console=ttyS0",
		"kernel": map[string]any{"file": "bzImage"}, "initrd": map[string]any{"file": "initrd.img"},
		"bios": map[string]any{"file": "bios.bin"}, "vgabios": map[string]any{"file": "vgabios.bin"},
		"fs": map[string]any{"file": "fs.json", "blob_dir": "blobs"}, "net_device": "ne2k",
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"manifest.json": data, "bzImage": {1}, "initrd.img": {1}, "bios.bin": {1}, "vgabios.bin": {1}, "fs.json": []byte("{}")} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "blobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := LoadImage(dir)
	if err != nil {
		t.Fatalf("LoadImage: %v", err)
	}
	return img
}

// fakeState builds an uncompressed v86 state (src/state.js layout) for a
// machine with memBytes of memory and a buffer of n bytes.
func fakeState(t *testing.T, memBytes int64, n int) []byte {
	t.Helper()
	info, err := json.Marshal(map[string]any{
		"buffer_infos": []map[string]int{{"offset": 0, "length": n}},
		"state":        []any{memBytes, map[string]any{"__state_type__": "Uint8Array", "buffer_id": 0}},
	})
	if err != nil {
		t.Fatal(err)
	}
	start := (16 + len(info) + 3) &^ 3
	out := make([]byte, start+n)
	binary.LittleEndian.PutUint32(out[0:], stateMagic)
	binary.LittleEndian.PutUint32(out[4:], stateVersion)
	binary.LittleEndian.PutUint32(out[8:], uint32(len(out)))
	binary.LittleEndian.PutUint32(out[12:], uint32(len(info)))
	copy(out[16:], info)
	for i := start; i < len(out); i++ {
		out[i] = byte(i * 7)
	}
	return out
}

func zstdBytes(t *testing.T, raw []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(raw, nil)
}

func TestLoadImageErrors(t *testing.T) {
	_, err := LoadImage(filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "pgwasm image build") {
		t.Errorf("missing dir: err = %v, want advice to build the image", err)
	}
	img := writeImage(t, "k1")
	if err := os.Remove(filepath.Join(img.Dir, "initrd.img")); err != nil {
		t.Fatal(err)
	}
	_, err = LoadImage(img.Dir)
	if err == nil || !strings.Contains(err.Error(), "incomplete (initrd)") {
		t.Errorf("missing initrd: err = %v, want incomplete (initrd)", err)
	}
}

func TestCheckMeta(t *testing.T) {
	img := writeImage(t, "aaaaaaaaaaaaaaaaaaaa")
	good := manifest.State{ImageKey: img.Key(), MemoryMB: 128, VGAMemoryMB: manifest.VGAMemoryMB, NetDevice: "ne2k", V86Version: "1"}
	tests := []struct {
		name string
		edit func(*manifest.State)
		want string // substring of the error; "" for none
	}{
		{"match", func(*manifest.State) {}, ""},
		{"other image", func(m *manifest.State) { m.ImageKey = "bbbbbbbbbbbbbbbbbbbb" }, "saved on image bbbbbbbbbbbb but image"},
		{"other memory", func(m *manifest.State) { m.MemoryMB = 256 }, "256 MB of memory, not 128 MB"},
		{"other vga", func(m *manifest.State) { m.VGAMemoryMB = 8 }, "other devices"},
		{"other nic", func(m *manifest.State) { m.NetDevice = "virtio" }, "other devices"},
		// The image (no agent_channels) answers on serial only: a state
		// saved with the virtio-console device is not its own.
		{"other console", func(m *manifest.State) { m.VirtioConsole = true }, "virtio-console true"},
		{"other v86", func(m *manifest.State) { m.V86Version = "2" }, "v86 2"},
	}
	for _, tt := range tests {
		m := good
		tt.edit(&m)
		err := checkMeta(&m, img, 128, "1")
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: checkMeta = %v, want %q", tt.name, err, tt.want)
		}
	}
	m := good
	m.ImageKey = "bbbbbbbbbbbbbbbbbbbb"
	if err := checkMeta(&m, img, 128, "1"); !strings.Contains(err.Error(), "aaaaaaaaaaaa") {
		t.Errorf("key mismatch error %q does not name the image's key", err)
	}
}

func TestInspectState(t *testing.T) {
	dir := t.TempDir()
	raw := fakeState(t, 128<<20, 100000)
	full := zstdBytes(t, raw)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mem, err := inspectState(write("good.bin.zst", full))
	if err != nil || mem != 128<<20 {
		t.Fatalf("inspectState(good) = %d, %v; want %d", mem, err, 128<<20)
	}
	badMagic := append([]byte(nil), raw...)
	badMagic[0] ^= 0xff
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated", full[:len(full)*2/3], "truncated"},
		{"raw length short", zstdBytes(t, raw[:len(raw)-10]), "truncated"},
		{"not zstd", raw, "damaged"},
		{"bad magic", zstdBytes(t, badMagic), "magic"},
		{"empty", nil, "damaged"},
	}
	for _, tt := range tests {
		_, err := inspectState(write(tt.name, tt.data))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("inspectState(%s) = %v, want error with %q", tt.name, err, tt.want)
		}
	}
	if _, err := inspectState(filepath.Join(dir, "absent")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("inspectState(absent) = %v", err)
	}
}

func TestCompressStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	raw := fakeState(t, 256<<20, 1<<20)
	rawPath := filepath.Join(dir, "s.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "s.bin.zst")
	if err := compressState(context.Background(), rawPath, dst, QuickLevel); err != nil {
		t.Fatal(err)
	}
	mem, err := inspectState(dst)
	if err != nil || mem != 256<<20 {
		t.Fatalf("inspectState = %d, %v", mem, err)
	}
	if got := readZstd(t, dst); !bytes.Equal(got, raw) {
		t.Fatal("round trip differs")
	}
}

func TestPickState(t *testing.T) {
	img := writeImage(t, "key-one-0123456789")
	// No snapshot for the size: say how to make one.
	_, _, err := pickState(img, "", 256, "1", nil)
	if err == nil || !strings.Contains(err.Error(), "pgwasm image snapshot --image "+img.Dir+" --memory 256") {
		t.Fatalf("no snapshot: err = %v", err)
	}
	path := img.StatePath(128)
	if err := os.WriteFile(path, zstdBytes(t, fakeState(t, 128<<20, 64)), 0o644); err != nil {
		t.Fatal(err)
	}
	meta := manifest.State{ImageKey: img.Key(), MemoryMB: 128, VGAMemoryMB: manifest.VGAMemoryMB, NetDevice: "ne2k", V86Version: "1"}
	writeMeta := func(m manifest.State) {
		b, _ := json.Marshal(m)
		if err := os.WriteFile(manifest.MetaPath(path), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeMeta(meta)
	got, mem, err := pickState(img, "", 128, "1", nil)
	if err != nil || got != path || mem != 128 {
		t.Fatalf("pickState = %q, %d, %v", got, mem, err)
	}
	// An explicit state with no --memory takes the state's size.
	if _, mem, err := pickState(img, path, 0, "1", nil); err != nil || mem != 128 {
		t.Fatalf("pickState(explicit) = %d, %v", mem, err)
	}
	// Metadata that lies about the memory size is caught by the header.
	meta.MemoryMB = 512
	writeMeta(meta)
	if _, _, err := pickState(img, path, 512, "1", nil); err == nil || !strings.Contains(err.Error(), "holds 128 MB") {
		t.Fatalf("header check: err = %v", err)
	}
}

func TestFindHarnessNotInstalled(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "vm.mjs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := FindHarness(dir)
	if err == nil || !strings.Contains(err.Error(), "make setup") {
		t.Fatalf("FindHarness = %v, want advice to run make setup", err)
	}
}

func TestStartErrors(t *testing.T) {
	harness, err := FindHarness(filepath.Join("..", "..", "harness"))
	if err != nil {
		t.Skipf("harness not installed: %v", err)
	}
	img := writeImage(t, "k")
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"node missing", Options{ImageDir: img.Dir, FullBoot: true, HarnessDir: harness, Node: "/nonexistent/node"}, "install Node.js"},
		{"no image", Options{ImageDir: filepath.Join(img.Dir, "none"), HarnessDir: harness}, "pgwasm image build"},
		{"no snapshot", Options{ImageDir: img.Dir, HarnessDir: harness, Memory: 256}, "pgwasm image snapshot"},
		{"bad memory", Options{ImageDir: img.Dir, FullBoot: true, HarnessDir: harness, Memory: 100}, "power of two"},
	}
	for _, tt := range tests {
		_, err := Start(context.Background(), tt.opts)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Start = %v, want error with %q", tt.name, err, tt.want)
		}
	}
}
