package vm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestMeasureState splits an image's snapshot into what it holds, each part
// compressed on its own (docs/vm.md, "What the state holds"): RAM pages that
// equal a page of a file in the image's 9p tree (program code, libraries and
// catalog pages, named by file), the other RAM pages (the kernel image's
// physical range apart from the rest: process memory, shared memory, slab,
// page structures), the files the guest wrote into the 9p tree, and the
// devices. PGWASM_MEASURE_STATE=<memory MB>, PGWASM_IMAGE=<image dir>.
func TestMeasureState(t *testing.T) {
	dir := os.Getenv("PGWASM_IMAGE")
	memoryMB, _ := strconv.Atoi(os.Getenv("PGWASM_MEASURE_STATE"))
	if dir == "" || memoryMB <= 0 {
		t.Skip("set PGWASM_IMAGE and PGWASM_MEASURE_STATE=<memory MB>")
	}
	img, err := LoadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	raw := readZstd(t, img.StatePath(memoryMB))
	infoLen := int(binary.LittleEndian.Uint32(raw[12:]))
	var info struct {
		Buffers []struct{ Offset, Length int } `json:"buffer_infos"`
		State   []json.RawMessage              `json:"state"`
	}
	if err := json.Unmarshal(raw[16:16+infoLen], &info); err != nil {
		t.Fatal(err)
	}
	base := (16 + infoLen + 3) &^ 3
	buffer := func(m json.RawMessage) []byte {
		var ref struct {
			ID *int `json:"buffer_id"`
		}
		if json.Unmarshal(m, &ref) != nil || ref.ID == nil {
			return nil
		}
		b := info.Buffers[*ref.ID]
		return raw[base+b.Offset : base+b.Offset+b.Length]
	}
	// v86 keeps RAM as a bitmap of non-zero pages and those pages packed in
	// order: find the pair by its shape rather than by its index in the CPU
	// state, which moves between v86 versions.
	var bitmap, ram []byte
	ramIndex := -1
	for i := 0; i+1 < len(info.State); i++ {
		bm, pages := buffer(info.State[i+1]), buffer(info.State[i])
		if len(bm) != memoryMB<<20/4096/8 || len(pages) == 0 {
			continue
		}
		n := 0
		for _, b := range bm {
			n += bits.OnesCount8(b)
		}
		if n*4096 == len(pages) {
			bitmap, ram, ramIndex = bm, pages, i
			break
		}
	}
	if ram == nil {
		t.Fatal("no RAM page bitmap in the state: v86's state layout changed")
	}

	owner := filePages(t, img)
	// The kernel is loaded at CONFIG_PHYSICAL_START (16 MB); init_size in
	// the bzImage header is what it occupies there, bss included.
	bz, err := os.ReadFile(img.bootFiles().Kernel)
	if err != nil {
		t.Fatal(err)
	}
	kernelStart := 16 << 20
	kernelEnd := kernelStart + int(binary.LittleEndian.Uint32(bz[0x260:]))

	byFile := map[string][]byte{}
	var matched, kernel, rest []byte
	k := 0
	for pfn := 0; pfn < len(bitmap)*8; pfn++ {
		if bitmap[pfn/8]>>(pfn%8)&1 == 0 {
			continue
		}
		page := ram[k*4096 : (k+1)*4096]
		k++
		if f, ok := owner[sha256.Sum256(page)]; ok {
			byFile[f] = append(byFile[f], page...)
			matched = append(matched, page...)
		} else if addr := pfn * 4096; addr >= kernelStart && addr < kernelEnd {
			kernel = append(kernel, page...)
		} else {
			rest = append(rest, page...)
		}
	}
	var guestFiles, devices []byte
	for i, m := range info.State {
		switch {
		case i == ramIndex || i == ramIndex+1:
		case bytes.Contains(m, []byte(`"9P2000.L"`)):
			guestFiles = append(guestFiles, nestedBuffers(m, buffer)...)
		default:
			devices = append(devices, nestedBuffers(m, buffer)...)
		}
	}

	row := func(what string, b []byte) {
		t.Logf("| %s | %.2f MB | %.2f MB |", what, float64(len(b))/1e6, float64(compressedSize(t, b))/1e6)
	}
	t.Logf("state-%d.bin.zst: %d bytes; raw %d bytes, of it RAM %d pages", memoryMB, fileSize(t, img.StatePath(memoryMB)), len(raw), len(ram)/4096)
	t.Logf("| part | raw | zstd (alone) |")
	t.Logf("|---|---|---|")
	row("RAM pages equal to a file's page", matched)
	// The largest files, then by directory, for the many small files
	// (catalog pages in shared buffers are under the data directory).
	byDir := map[string][]byte{}
	for f, b := range byFile {
		d := filepath.Dir(filepath.Dir(f))
		byDir[d] = append(byDir[d], b...)
	}
	for _, f := range largest(byFile, 12) {
		row("&nbsp;&nbsp;"+f, byFile[f])
	}
	for _, d := range largest(byDir, 6) {
		row("&nbsp;&nbsp;in directories under "+d, byDir[d])
	}
	row(fmt.Sprintf("RAM pages of the kernel image (%d-%d MB physical)", kernelStart>>20, (kernelEnd+1<<20-1)>>20), kernel)
	row("other RAM pages (process and shared memory, slab, page structures)", rest)
	row("the 9p device: files the guest wrote (the data directory), its reply buffer", guestFiles)
	row("device state and the info block", append(devices, raw[16:16+infoLen]...))
}

// largest returns the n keys of m with the longest values, longest first.
func largest(m map[string][]byte, n int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return len(m[b]) - len(m[a]) })
	return keys[:min(n, len(keys))]
}

// filePages maps every non-zero 4 KiB page of every file in the image's 9p
// tree (at 4 KiB offsets, as the page cache holds them) to the file's path.
func filePages(t *testing.T, img *Image) map[[32]byte]string {
	t.Helper()
	files := img.bootFiles()
	data, err := os.ReadFile(files.FSJSON)
	if err != nil {
		t.Fatal(err)
	}
	var tree struct {
		Root []json.RawMessage `json:"fsroot"`
	}
	if err := json.Unmarshal(data, &tree); err != nil {
		t.Fatal(err)
	}
	owner := map[[32]byte]string{}
	var zero [4096]byte
	var walk func(entries []json.RawMessage, prefix string)
	walk = func(entries []json.RawMessage, prefix string) {
		for _, e := range entries {
			// [name, size, mtime, mode, uid, gid, target]: target is a
			// list for a directory, a blob name for a file with contents.
			var f []json.RawMessage
			if json.Unmarshal(e, &f) != nil || len(f) < 7 {
				continue
			}
			var name, blob string
			var mode int
			json.Unmarshal(f[0], &name)
			json.Unmarshal(f[3], &mode)
			var children []json.RawMessage
			if json.Unmarshal(f[6], &children) == nil {
				walk(children, prefix+"/"+name)
				continue
			}
			if mode&0o170000 != 0o100000 || json.Unmarshal(f[6], &blob) != nil || blob == "" {
				continue
			}
			contents := readBlob(t, filepath.Join(files.BlobDir, blob))
			for off := 0; off < len(contents); off += 4096 {
				var page [4096]byte
				copy(page[:], contents[off:])
				if page == zero {
					continue
				}
				if sum := sha256.Sum256(page[:]); owner[sum] == "" {
					owner[sum] = prefix + "/" + name
				}
			}
		}
	}
	walk(tree.Root, "")
	return owner
}

// nestedBuffers concatenates every buffer inside a state value.
func nestedBuffers(v json.RawMessage, buffer func(json.RawMessage) []byte) []byte {
	if b := buffer(v); b != nil {
		return b
	}
	var out []byte
	var list []json.RawMessage
	var obj map[string]json.RawMessage
	switch {
	case json.Unmarshal(v, &list) == nil:
		for _, e := range list {
			out = append(out, nestedBuffers(e, buffer)...)
		}
	case json.Unmarshal(v, &obj) == nil:
		for _, e := range obj {
			out = append(out, nestedBuffers(e, buffer)...)
		}
	}
	return out
}

func readBlob(t *testing.T, path string) []byte {
	t.Helper()
	if filepath.Ext(path) == ".zst" {
		return readZstd(t, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readZstd(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(4<<30))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	b, err := io.ReadAll(dec)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// compressedSize is b's size at the Go encoder's best level: a little above
// the zstd command's -19 that published states use, the same for every part.
func compressedSize(t *testing.T, b []byte) int {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return len(enc.EncodeAll(b, nil))
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
