package vm

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

// checkMeta says why a state cannot run on this image with these settings.
func checkMeta(m *manifest.State, img *Image, memoryMB int, v86Version string) error {
	switch {
	case m.ImageKey != img.Key():
		return fmt.Errorf("state was saved on image %s but image %s has key %s: take a new snapshot (pgwasm image snapshot --memory %d)",
			short(m.ImageKey), img.Dir, short(img.Key()), m.MemoryMB)
	case m.MemoryMB != memoryMB:
		return fmt.Errorf("state was saved with %d MB of memory, not %d MB: use --memory %d or take a snapshot (pgwasm image snapshot --memory %d)",
			m.MemoryMB, memoryMB, m.MemoryMB, memoryMB)
	case m.VGAMemoryMB != manifest.VGAMemoryMB || m.NetDevice != img.manifest.NetDevice || m.VirtioConsole != img.virtioConsole():
		return fmt.Errorf("state was saved with other devices (VGA %d MB, NIC %s, virtio-console %v; now VGA %d MB, NIC %s, virtio-console %v): take a new snapshot",
			m.VGAMemoryMB, m.NetDevice, m.VirtioConsole, manifest.VGAMemoryMB, img.manifest.NetDevice, img.virtioConsole())
	case m.V86Version != v86Version:
		return fmt.Errorf("state was saved by v86 %s, the harness has v86 %s: take a new snapshot", m.V86Version, v86Version)
	}
	return nil
}

func short(key string) string {
	if len(key) > 12 {
		return key[:12]
	}
	return key
}

// v86 state header (src/state.js): four little-endian int32 (magic, version,
// total length, info block length), the info block JSON, then buffers.
const (
	stateMagic   = 0x86768676
	stateVersion = 6
)

// inspectState decompresses a zstd state file completely and checks its
// header, its length and its memory size, so a truncated or foreign file is
// reported here instead of crashing the emulator. It returns the memory size
// recorded in the state, in bytes.
func inspectState(path string) (memoryBytes int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("state file %s does not exist: %w", path, err)
		}
		return 0, fmt.Errorf("cannot open state: %w", err)
	}
	defer f.Close()
	dec, err := zstd.NewReader(bufio.NewReader(f), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return 0, fmt.Errorf("state %s: %w", path, err)
	}
	defer dec.Close()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("state file %s is damaged or not a v86 state (%s)", path, fmt.Sprintf(format, args...))
	}
	var hdr [16]byte
	if _, err := io.ReadFull(dec, hdr[:]); err != nil {
		return 0, bad("header: %v", err)
	}
	magic := binary.LittleEndian.Uint32(hdr[0:])
	version := binary.LittleEndian.Uint32(hdr[4:])
	total := int64(binary.LittleEndian.Uint32(hdr[8:]))
	infoLen := int64(binary.LittleEndian.Uint32(hdr[12:]))
	if magic != stateMagic {
		return 0, bad("magic %#x", magic)
	}
	if version != stateVersion {
		return 0, bad("state format version %d, v86 reads %d", version, stateVersion)
	}
	if infoLen <= 0 || 16+infoLen > total {
		return 0, bad("info block length %d", infoLen)
	}
	infoBuf := make([]byte, infoLen)
	if _, err := io.ReadFull(dec, infoBuf); err != nil {
		return 0, bad("info block: %v", err)
	}
	var info struct {
		State []json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(infoBuf, &info); err != nil {
		return 0, bad("info block: %v", err)
	}
	if len(info.State) == 0 {
		return 0, bad("no CPU state")
	}
	if err := json.Unmarshal(info.State[0], &memoryBytes); err != nil {
		return 0, bad("memory size: %v", err)
	}
	// Decompress the rest: a truncated file shows here.
	n, err := io.Copy(io.Discard, dec)
	if got := 16 + infoLen + n; err != nil || got != total {
		if err == nil {
			err = errors.New("stream ends early")
		}
		return 0, fmt.Errorf("state file %s is truncated or damaged (%d of %d bytes): %v", path, got, total, err)
	}
	return memoryBytes, nil
}

// compressState compresses raw into dst at a zstd level (19 for published
// snapshots, 3 for quick saves). It uses the zstd command when there is one
// (its level 19 is smaller than the Go encoder's best) and the Go encoder
// otherwise. v86 decompresses with its own zstd, so the window stays at the
// level's default (no --long).
func compressState(ctx context.Context, raw, dst string, level int) error {
	cmd, err := hostexec.Command(ctx, "zstd", fmt.Sprintf("-%d", level), "-q", "-f", "-T0", "-o", dst, raw)
	switch {
	case err == nil:
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("zstd -%d %s: %w: %s", level, raw, err, strings.TrimSpace(string(out)))
		}
		return nil
	case !errors.Is(err, exec.ErrNotFound):
		return err
	}
	in, err := os.Open(raw)
	if err != nil {
		return fmt.Errorf("cannot open raw state: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("cannot create state file: %w", err)
	}
	enc, err := zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)))
	if err != nil {
		out.Close()
		return fmt.Errorf("zstd encoder: %w", err)
	}
	if _, err := io.Copy(enc, in); err != nil {
		enc.Close()
		out.Close()
		return fmt.Errorf("cannot compress state: %w", err)
	}
	if err := enc.Close(); err != nil {
		out.Close()
		return fmt.Errorf("cannot compress state: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("cannot write state file: %w", err)
	}
	return nil
}

// fileSHA256 returns the hex sha256 and size of a file.
func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("cannot open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("cannot read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so readers never see half a file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("cannot create temporary file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot write %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("cannot chmod %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("cannot rename into %s: %w", path, err)
	}
	return nil
}
