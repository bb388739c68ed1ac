package ninep

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// Unix file type bits, as v86 expects them in a node's mode.
const (
	typeMask = 0o170000
	typeDir  = 0o040000
	typeFile = 0o100000
	typeLink = 0o120000
)

// shortHash is the number of sha256 hex digits in a blob name, as in v86's
// tools/fs2json.py.
const shortHash = 8

type node struct {
	name     string
	size     int64
	mtime    int64
	mode     uint32
	uid, gid uint32
	children []*node // directory
	target   string  // symlink
	blob     *blob   // regular file
}

// blob is one distinct file content.
type blob struct {
	sum      [sha256.Size]byte
	size     int64
	hostPath string // any one file with this content
	base     string // hash part of the file name, set by nameBlobs
	file     string // file name in BlobDir, set once stored
	stored   int64  // size of the stored file
	zst      bool
}

type inodeKey struct{ dev, ino uint64 }

// walker holds the state of one Write call.
type walker struct {
	opts  Options
	stats Stats
	blobs map[[sha256.Size]byte]*blob
	links map[inodeKey]*blob
	order []*blob // distinct contents in walk order, for deterministic work
}

func write(ctx context.Context, root, out string, opts Options) (Stats, error) {
	if _, err := os.Lstat(out); err == nil {
		return Stats{}, fmt.Errorf("cannot write 9p tree to %s: already exists", out)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Stats{}, fmt.Errorf("cannot write 9p tree to %s: %w", out, err)
	}
	st, err := os.Stat(root)
	if err != nil {
		return Stats{}, fmt.Errorf("cannot read 9p root: %w", err)
	}
	if !st.IsDir() {
		return Stats{}, fmt.Errorf("cannot read 9p root %s: not a directory", root)
	}

	w := &walker{
		opts:  opts,
		blobs: make(map[[sha256.Size]byte]*blob),
		links: make(map[inodeKey]*blob),
	}
	children, err := w.walkDir(ctx, root, "/")
	if err != nil {
		return Stats{}, err
	}
	nameBlobs(w.order)

	tmp, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return Stats{}, fmt.Errorf("cannot create temporary output directory: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Stats{}, fmt.Errorf("cannot set mode of %s: %w", tmp, err)
	}
	if err := storeBlobs(ctx, w.order, filepath.Join(tmp, BlobDir), opts.ZstdLevel); err != nil {
		return Stats{}, err
	}
	for _, b := range w.order {
		w.stats.Blobs++
		w.stats.BlobBytes += b.stored
		if b.zst {
			w.stats.Compressed++
		}
	}
	index, err := encodeIndex(children, w.stats.Bytes)
	if err != nil {
		return Stats{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, IndexName), index, 0o644); err != nil {
		return Stats{}, fmt.Errorf("cannot write %s: %w", IndexName, err)
	}
	// rename(2) would silently replace an empty directory made meanwhile.
	if _, err := os.Lstat(out); err == nil {
		return Stats{}, fmt.Errorf("cannot write 9p tree to %s: created while writing", out)
	}
	if err := os.Rename(tmp, out); err != nil {
		return Stats{}, fmt.Errorf("cannot move 9p tree into place: %w", err)
	}
	done = true
	return w.stats, nil
}

// walkDir returns the nodes for the entries of hostDir, sorted by name
// (os.ReadDir sorts), so the index does not depend on directory order.
func (w *walker) walkDir(ctx context.Context, hostDir, guestDir string) ([]*node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(hostDir)
	if err != nil {
		return nil, fmt.Errorf("cannot read directory %s: %w", hostDir, err)
	}
	nodes := make([]*node, 0, len(entries))
	for _, e := range entries {
		hostPath := filepath.Join(hostDir, e.Name())
		guestPath := path.Join(guestDir, e.Name())
		if w.opts.Exclude != nil && w.opts.Exclude(guestPath) {
			continue
		}
		n, err := w.visit(ctx, hostPath, guestPath)
		if err != nil {
			return nil, err
		}
		if n != nil {
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

// visit returns the node for one host file, or nil if it is skipped.
func (w *walker) visit(ctx context.Context, hostPath, guestPath string) (*node, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(hostPath, &st); err != nil {
		return nil, fmt.Errorf("cannot stat %s: %w", hostPath, err)
	}
	n := &node{
		name:  filepath.Base(hostPath),
		mode:  uint32(st.Mode),
		mtime: w.opts.MTime,
	}
	if m, ok := w.opts.Meta[strings.TrimPrefix(guestPath, "/")]; ok {
		n.uid, n.gid = m.UID, m.GID
		n.mode = n.mode&typeMask | rootfs.UnixMode(m.Mode)
	}
	if w.opts.KeepMTime {
		n.mtime = int64(st.Mtim.Sec)
	}
	if !utf8.ValidString(n.name) {
		// JSON strings are Unicode; the name would change on the way.
		w.skip(guestPath, "name is not valid UTF-8")
		return nil, nil
	}
	switch n.mode & typeMask {
	case typeDir:
		children, err := w.walkDir(ctx, hostPath, guestPath)
		if err != nil {
			return nil, err
		}
		// Directory sizes depend on the host filesystem; v86 computes its
		// own when the guest opens the directory.
		n.children = children
		w.stats.Dirs++
	case typeLink:
		target, err := os.Readlink(hostPath)
		if err != nil {
			return nil, fmt.Errorf("cannot read link %s: %w", hostPath, err)
		}
		if !utf8.ValidString(target) {
			w.skip(guestPath, "symlink target is not valid UTF-8")
			return nil, nil
		}
		n.target = target
		n.size = int64(len(target))
		w.stats.Symlinks++
	case typeFile:
		b, err := w.content(hostPath, &st)
		if err != nil {
			return nil, err
		}
		n.blob = b
		n.size = b.size
		w.stats.Files++
		w.stats.Bytes += b.size
	default:
		w.skip(guestPath, fileType(n.mode))
		return nil, nil
	}
	return n, nil
}

func (w *walker) skip(guestPath, reason string) {
	w.stats.Skipped = append(w.stats.Skipped, Skipped{Path: guestPath, Reason: reason})
}

// content returns the blob for a regular file, hashing it unless it is a
// hard link to a file already hashed.
func (w *walker) content(hostPath string, st *syscall.Stat_t) (*blob, error) {
	key := inodeKey{dev: uint64(st.Dev), ino: uint64(st.Ino)}
	if st.Nlink > 1 {
		if b, ok := w.links[key]; ok {
			w.stats.HardLinks++
			return b, nil
		}
	}
	sum, size, err := hashFile(hostPath)
	if err != nil {
		return nil, err
	}
	b, ok := w.blobs[sum]
	if !ok {
		b = &blob{sum: sum, size: size, hostPath: hostPath}
		w.blobs[sum] = b
		w.order = append(w.order, b)
	}
	if st.Nlink > 1 {
		w.links[key] = b
	}
	return b, nil
}

func hashFile(hostPath string) ([sha256.Size]byte, int64, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(hostPath)
	if err != nil {
		return sum, 0, fmt.Errorf("cannot open %s: %w", hostPath, err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return sum, 0, fmt.Errorf("cannot read %s: %w", hostPath, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, size, nil
}

func fileType(mode uint32) string {
	switch mode & typeMask {
	case 0o020000:
		return "character device"
	case 0o060000:
		return "block device"
	case 0o010000:
		return "fifo"
	case 0o140000:
		return "socket"
	default:
		return fmt.Sprintf("unknown file type %#o", mode&typeMask)
	}
}

// nameBlobs gives each blob the base of its file name: 8 hex digits of its
// hash, or all 64 for every content whose 8 digits another content shares.
// The rule depends only on the set of contents, not on walk order.
func nameBlobs(blobs []*blob) {
	byPrefix := make(map[string]int)
	for _, b := range blobs {
		byPrefix[hex.EncodeToString(b.sum[:])[:shortHash]]++
	}
	for _, b := range blobs {
		full := hex.EncodeToString(b.sum[:])
		if byPrefix[full[:shortHash]] > 1 {
			b.base = full
		} else {
			b.base = full[:shortHash]
		}
	}
}

// storeBlobs writes each blob into dir as <name>.bin or, when zstd makes it
// smaller, <name>.bin.zst, using one worker per CPU.
func storeBlobs(ctx context.Context, blobs []*blob, dir string, level int) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("cannot create blob directory: %w", err)
	}
	var enc *zstd.Encoder
	if level >= 0 {
		if level == 0 {
			level = DefaultZstdLevel
		}
		var err error
		enc, err = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
			// The checksum guards against a corrupt download; v86 uses the
			// reference decoder, which verifies it.
			zstd.WithEncoderCRC(true))
		if err != nil {
			return fmt.Errorf("cannot create zstd encoder: %w", err)
		}
		defer enc.Close()
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan *blob)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				if err := storeBlob(b, dir, enc); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for _, b := range blobs {
		select {
		case work <- b:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

func storeBlob(b *blob, dir string, enc *zstd.Encoder) error {
	data, err := os.ReadFile(b.hostPath)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", b.hostPath, err)
	}
	if sha256.Sum256(data) != b.sum {
		return fmt.Errorf("cannot store %s: file changed while the tree was written", b.hostPath)
	}
	name := b.base + ".bin"
	// Empty files stay plain: there is nothing to save, and v86 would pass
	// a zero-length buffer to its decoder.
	if enc != nil && len(data) > 0 {
		if z := enc.EncodeAll(data, nil); len(z) < len(data) {
			data, name, b.zst = z, b.base+".bin.zst", true
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		return fmt.Errorf("cannot write blob for %s: %w", b.hostPath, err)
	}
	b.file, b.stored = name, int64(len(data))
	return nil
}

// encodeIndex writes fs.json compactly, as v86's fs2json.py does.
func encodeIndex(children []*node, total int64) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(`{"fsroot":`)
	if err := encodeNodes(&buf, children); err != nil {
		return nil, err
	}
	buf.WriteString(`,"version":`)
	buf.WriteString(strconv.Itoa(Version))
	buf.WriteString(`,"size":`)
	buf.WriteString(strconv.FormatInt(total, 10))
	buf.WriteString("}\n")
	return buf.Bytes(), nil
}

func encodeNodes(buf *bytes.Buffer, nodes []*node) error {
	buf.WriteByte('[')
	for i, n := range nodes {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteByte('[')
		writeString(buf, n.name)
		for _, v := range []int64{n.size, n.mtime, int64(n.mode), int64(n.uid), int64(n.gid)} {
			buf.WriteByte(',')
			buf.WriteString(strconv.FormatInt(v, 10))
		}
		buf.WriteByte(',')
		switch {
		case n.mode&typeMask == typeDir:
			if err := encodeNodes(buf, n.children); err != nil {
				return err
			}
		case n.mode&typeMask == typeLink:
			writeString(buf, n.target)
		case n.blob != nil && n.blob.file != "":
			writeString(buf, n.blob.file)
		default:
			return fmt.Errorf("cannot encode node %q: no blob stored", n.name)
		}
		buf.WriteByte(']')
	}
	buf.WriteByte(']')
	return nil
}

// writeString writes s as a JSON string. HTML escaping is off so names like
// "a<b" stay readable; JSON.parse reads both forms the same.
func writeString(buf *bytes.Buffer, s string) {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	// Encoding a valid UTF-8 string cannot fail.
	_ = enc.Encode(s)
	buf.Truncate(buf.Len() - 1) // Encode's newline
}
