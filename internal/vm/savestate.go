package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// Compression levels: published snapshots are downloaded by every page load,
// so they get zstd's slow level 19; other saves are compressed in about a
// second.
const (
	SnapshotLevel = 19
	QuickLevel    = 3
)

// SaveState makes the guest ready for a snapshot (prepare_snapshot: CHECKPOINT,
// sync, drop the page cache), saves the v86 state, compresses it (QuickLevel)
// into path and writes its metadata next to it (manifest.MetaPath). Both files appear
// whole or not at all.
func (v *VM) SaveState(ctx context.Context, path string) (*manifest.State, error) {
	return v.saveState(ctx, path, QuickLevel, false)
}

// saveState saves the state; thorough asks prepare_snapshot to also evict
// file pages and replay a typical session (the published snapshot: smaller,
// and no 9p fetches after a restore; it takes 15-25 s and, on a VM that has
// run a while, can take minutes, so a user's save skips it).
func (v *VM) saveState(ctx context.Context, path string, level int, thorough bool) (*manifest.State, error) {
	if v.img == nil {
		return nil, fmt.Errorf("save state: the VM was not started from an image (vm.Boot)")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("state path: %w", err)
	}
	if _, err := v.Request(ctx, map[string]any{"op": "prepare_snapshot", "thorough": thorough}); err != nil {
		return nil, fmt.Errorf("prepare_snapshot: %w", err)
	}
	dir := filepath.Dir(abs)
	tmpRaw, err := os.CreateTemp(dir, "."+filepath.Base(abs)+".*.raw")
	if err != nil {
		return nil, fmt.Errorf("cannot create temporary state: %w", err)
	}
	tmpRaw.Close()
	defer os.Remove(tmpRaw.Name())
	tmpZst := tmpRaw.Name() + ".zst"
	defer os.Remove(tmpZst)

	t := time.Now()
	if _, err := v.h.call(ctx, "save_state", map[string]any{"path": tmpRaw.Name()}); err != nil {
		return nil, err
	}
	saved := time.Since(t)
	rawInfo, err := os.Stat(tmpRaw.Name())
	if err != nil {
		return nil, fmt.Errorf("saved state: %w", err)
	}
	t = time.Now()
	if err := compressState(ctx, tmpRaw.Name(), tmpZst, level); err != nil {
		return nil, err
	}
	compressed := time.Since(t)
	if _, err := inspectState(tmpZst); err != nil {
		return nil, fmt.Errorf("compressed state does not read back: %w", err)
	}
	sum, size, err := fileSHA256(tmpZst)
	if err != nil {
		return nil, err
	}
	meta := &manifest.State{
		ImageKey:      v.img.Key(),
		MemoryMB:      v.memoryMB,
		VGAMemoryMB:   manifest.VGAMemoryMB,
		NetDevice:     v.img.manifest.NetDevice,
		VirtioConsole: v.img.virtioConsole(),
		V86Version:    v.v86,
		File:          filepath.Base(abs),
		Size:          size,
		SHA256:        sum,
		RawSize:       rawInfo.Size(),
	}
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("state metadata: %w", err)
	}
	// The state first, then its metadata: a crash in between leaves metadata
	// whose sha256 does not match, which the snapshot cache treats as stale.
	if err := os.Rename(tmpZst, abs); err != nil {
		return nil, fmt.Errorf("cannot rename state into place: %w", err)
	}
	if err := writeFileAtomic(manifest.MetaPath(abs), append(data, '\n')); err != nil {
		return nil, err
	}
	v.logger.Info("state saved", "path", abs, "level", level, "bytes", size, "raw_bytes", meta.RawSize,
		"save", saved.Round(time.Millisecond), "compress", compressed.Round(time.Millisecond))
	return meta, nil
}
