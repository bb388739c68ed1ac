package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// SnapshotOptions says which image and memory size to snapshot.
type SnapshotOptions struct {
	ImageDir   string
	Memory     int  // MB
	Force      bool // snapshot even when the cached one is current
	HarnessDir string
	Node       string
	Logger     *slog.Logger
}

// SnapshotResult reports one snapshot.
type SnapshotResult struct {
	Path     string          `json:"path"`
	Cached   bool            `json:"cached"` // the existing snapshot was current
	Meta     *manifest.State `json:"meta"`
	Boot     time.Duration   `json:"-"`
	Save     time.Duration   `json:"-"`
	Meminfo  string          `json:"meminfo,omitempty"`
	Timings  *Timings        `json:"timings,omitempty"`
	BlobStat *BlobStats      `json:"blob,omitempty"`
}

// Snapshot boots the image from scratch, waits for PostgreSQL, and saves
// state-<MB>.bin.zst and state-<MB>.json into the image directory. It does
// nothing when the existing snapshot belongs to this image, memory size and
// v86 version and its file is intact, unless Force is set.
func Snapshot(ctx context.Context, opts SnapshotOptions) (*SnapshotResult, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	img, err := LoadImage(opts.ImageDir)
	if err != nil {
		return nil, err
	}
	harnessDir, err := FindHarness(opts.HarnessDir)
	if err != nil {
		return nil, err
	}
	v86ver, err := v86Version(harnessDir)
	if err != nil {
		return nil, err
	}
	path := img.StatePath(opts.Memory)
	if !opts.Force {
		meta, why := cachedSnapshot(img, path, opts.Memory, v86ver)
		if meta != nil {
			logger.Info("snapshot is current", "path", path, "bytes", meta.Size)
			return &SnapshotResult{Path: path, Cached: true, Meta: meta}, nil
		}
		logger.Info("taking snapshot", "reason", why)
	}

	t := time.Now()
	v, err := Start(ctx, Options{
		ImageDir:   img.Dir,
		Memory:     opts.Memory,
		FullBoot:   true,
		HarnessDir: harnessDir,
		Node:       opts.Node,
		Logger:     logger,
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot %d MB: %w", opts.Memory, err)
	}
	defer v.Close()
	res := &SnapshotResult{Path: path, Boot: time.Since(t)}
	timings := v.Timings()
	res.Timings = &timings

	// What occupies RAM decides the state's size; log it for tuning.
	if r, err := v.Query(ctx, "select pg_read_file('/proc/meminfo')"); err == nil && len(r.Rows) == 1 && r.Rows[0][0] != nil {
		res.Meminfo = summarizeMeminfo(*r.Rows[0][0])
		logger.Info("guest memory before snapshot", "meminfo", res.Meminfo)
	} else if err != nil {
		logger.Warn("cannot read guest meminfo", "err", err)
	}
	if st, err := v.Stats(ctx); err == nil {
		res.BlobStat = st.Blob
	}

	t = time.Now()
	meta, err := v.saveState(ctx, path, SnapshotLevel, true)
	if err != nil {
		return nil, fmt.Errorf("snapshot %d MB: %w", opts.Memory, err)
	}
	res.Save = time.Since(t)
	res.Meta = meta
	return res, nil
}

// cachedSnapshot returns the metadata of a current snapshot, or nil and why
// a new one is needed.
func cachedSnapshot(img *Image, path string, memoryMB int, v86ver string) (*manifest.State, string) {
	meta, err := manifest.ReadState(path)
	if err != nil {
		return nil, "no metadata"
	}
	if err := checkMeta(meta, img, memoryMB, v86ver); err != nil {
		return nil, err.Error()
	}
	sum, size, err := fileSHA256(path)
	if err != nil {
		return nil, "no state file"
	}
	if sum != meta.SHA256 || size != meta.Size {
		return nil, "state file does not match its metadata"
	}
	return meta, ""
}

// summarizeMeminfo keeps the /proc/meminfo lines that explain a state's size.
func summarizeMeminfo(s string) string {
	keep := map[string]bool{"MemTotal": true, "MemFree": true, "Buffers": true, "Cached": true,
		"Shmem": true, "AnonPages": true, "Slab": true, "KernelStack": true, "PageTables": true}
	var out []string
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if ok && keep[name] {
			out = append(out, name+"="+strings.Join(strings.Fields(rest), ""))
		}
	}
	return strings.Join(out, " ")
}

// MarshalJSON shows durations in milliseconds.
func (r SnapshotResult) MarshalJSON() ([]byte, error) {
	type plain SnapshotResult
	return json.Marshal(struct {
		plain
		Boot int64 `json:"boot_ms,omitempty"`
		Save int64 `json:"save_ms,omitempty"`
	}{plain(r), r.Boot.Milliseconds(), r.Save.Milliseconds()})
}
