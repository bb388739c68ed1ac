// Package ninep writes a host directory tree as a v86 9p root filesystem: an
// index file (fs.json, format version 3) and a directory of content blobs
// that v86 fetches whole on first open.
//
//	stats, err := ninep.Write(ctx, "build/rootfs", "build/out/9p", ninep.Options{
//		MTime:   sourceDateEpoch,
//		Exclude: func(p string) bool { return strings.HasPrefix(p, "/usr/share/doc/") },
//	})
//	// build/out/9p/fs.json and build/out/9p/blobs/*.bin[.zst];
//	// v86: filesystem: {basefs: ".../fs.json", baseurl: ".../blobs/"}
//
// Format, as read by v86's lib/filesystem.js: {"fsroot":[...],"version":3,
// "size":N}; each node is [name, size, mtime, mode, uid, gid, X] where mode
// carries the S_IFMT type bits and X is the child list of a directory, the
// target of a symlink or the blob file name of a regular file. v86 copies
// size, mtime, mode, uid and gid into the inode as they are; "size" is only
// reported as used space in statfs.
//
// Facts from v86's source that shape the output:
//   - The blob name is opaque to v86 (a URL under baseurl); it decompresses a
//     blob when the name ends in ".zst", per file, so compressed and plain
//     blobs can be mixed. Names are the first 8 hex digits of the sha256 of
//     the uncompressed content, as v86's tools make them. Where two different
//     contents share those 8 digits, both get the full 64-digit hash instead
//     (v86's fs2json.py just fails).
//   - Empty files need a blob too: v86 fetches it on read.
//   - v86 has no hard links in fs.json: each link becomes its own inode that
//     shares the blob, so content is stored once.
//   - Devices and fifos are not loaded ("Unexpected ifmt") and sockets are
//     ignored, so they are skipped and reported in Stats.Skipped.
package ninep

import (
	"context"

	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// Names inside the output directory. A server serves the output directory
// as is; v86 gets basefs = <dir>/IndexName and baseurl = <dir>/BlobDir + "/".
const (
	IndexName = "fs.json"
	BlobDir   = "blobs"
	// Version is the fs.json format version v86 0.5 accepts.
	Version = 3
)

// DefaultZstdLevel is used when Options.ZstdLevel is 0. Every visitor
// downloads the blobs while an image is built once, so the smallest output
// wins: klauspost/compress maps 19 to its best level (about zstd -11), which
// on PostgreSQL's binaries and libraries costs seconds per hundred megabytes
// on two cores. Decompression speed in v86 is the same for all levels.
const DefaultZstdLevel = 19

// Options controls Write. The zero value gives reproducible output: every
// mtime 0, zstd at DefaultZstdLevel, nothing excluded.
type Options struct {
	// MTime is the mtime, in seconds since the Unix epoch, of every node,
	// e.g. SOURCE_DATE_EPOCH. Ignored when KeepMTime is set.
	MTime int64
	// KeepMTime writes each file's host mtime instead of MTime.
	KeepMTime bool
	// ZstdLevel is a zstd level (1-22, mapped to the nearest level that
	// klauspost/compress has); 0 means DefaultZstdLevel and a negative value
	// stores every blob uncompressed. A blob is stored compressed only when
	// that makes it smaller.
	ZstdLevel int
	// Exclude, if set, is called with each path as the guest sees it
	// ("/usr/share/doc"); returning true leaves the file out, or the whole
	// subtree for a directory.
	Exclude func(guestPath string) bool
	// Meta gives owners and modes by path relative to root ("usr/bin/su"):
	// the host file system's are whoever ran the build. A path Meta lacks
	// is root:root with the host file's permission bits.
	Meta rootfs.Metas
}

// Stats describes what Write produced.
type Stats struct {
	Files    int // regular file nodes, hard links included
	Dirs     int // directory nodes, the root not included
	Symlinks int
	// HardLinks counts regular files that were another name of a file
	// already seen; their content is hashed and stored once.
	HardLinks int
	// Bytes is the total size of all regular file nodes, the "size" field
	// of fs.json.
	Bytes int64
	// Blobs is the number of distinct contents, each one file in BlobDir.
	Blobs int
	// Compressed is how many of those blobs are stored as .bin.zst.
	Compressed int
	// BlobBytes is the total size of the blob files as stored (compressed
	// where that was smaller).
	BlobBytes int64
	// Skipped lists what could not be put into the tree.
	Skipped []Skipped
}

// Skipped is a host file left out of the tree.
type Skipped struct {
	Path   string // as the guest would have seen it
	Reason string // e.g. "character device"
}

// Write walks the tree under root and writes fs.json and BlobDir into the
// new directory out. out must not exist. Write builds everything in a
// temporary sibling directory and renames it to out only on success, so on
// error out does not exist and nothing half-written is left behind.
func Write(ctx context.Context, root, out string, opts Options) (Stats, error) {
	return write(ctx, root, out, opts)
}
