// Package cpio writes reproducible newc cpio archives, the format the Linux
// kernel unpacks as an initramfs.
//
// The same entries always give the same bytes: entries are sorted by path,
// missing parent directories are added, every entry gets the same mtime,
// inode numbers are assigned in path order, and gzip output carries no name
// or timestamp. Encoding is done by u-root's pkg/cpio.
//
//	entries := []cpio.Entry{
//		cpio.Dir("dev", 0o755),
//		cpio.CharDev("dev/console", 0o600, 5, 1),
//		cpio.File("init", 0o755, script),
//	}
//	tree, err := cpio.TreeEntries("/tmp/busybox-root", "")
//	...
//	err = cpio.Write(w, append(entries, tree...), cpio.Options{Gzip: true})
package cpio

import "io"

// Entry is one file in an archive.
type Entry struct {
	// Path is slash-separated and relative to the archive root; a leading
	// "/" is ignored. It must not contain "." or ".." elements.
	Path string
	// Mode is a Unix st_mode: type bits (fs.ModeType is not used) plus
	// permission, setuid, setgid and sticky bits, e.g. 0o100755.
	Mode uint32
	UID  uint32
	GID  uint32
	// Data is the content of a regular file; it must be nil for other types.
	Data []byte
	// Target is the target of a symlink; it must be empty for other types.
	Target string
	// Major and Minor are the device numbers of a character or block device.
	Major uint32
	Minor uint32
}

// Unix file type bits as stored in Entry.Mode.
const (
	TypeMask   = 0o170000
	TypeSocket = 0o140000
	TypeLink   = 0o120000
	TypeFile   = 0o100000
	TypeBlock  = 0o060000
	TypeDir    = 0o040000
	TypeChar   = 0o020000
	TypeFIFO   = 0o010000
)

// File returns a regular file entry owned by root.
func File(path string, perm uint32, data []byte) Entry {
	return Entry{Path: path, Mode: TypeFile | perm&^TypeMask, Data: data}
}

// Dir returns a directory entry owned by root.
func Dir(path string, perm uint32) Entry {
	return Entry{Path: path, Mode: TypeDir | perm&^TypeMask}
}

// Symlink returns a symbolic link entry owned by root.
func Symlink(path, target string) Entry {
	return Entry{Path: path, Mode: TypeLink | 0o777, Target: target}
}

// CharDev returns a character device node owned by root, such as
// CharDev("dev/console", 0o600, 5, 1).
func CharDev(path string, perm, major, minor uint32) Entry {
	return Entry{Path: path, Mode: TypeChar | perm&^TypeMask, Major: major, Minor: minor}
}

// Options controls how an archive is written. The zero value writes an
// uncompressed archive with every mtime set to 0.
type Options struct {
	// MTime is the modification time, in seconds since the Unix epoch, given
	// to every entry; pass SOURCE_DATE_EPOCH here. Host mtimes are never used.
	MTime uint32
	// Gzip compresses the archive at the best level with an empty gzip
	// header (no name, mtime 0), which the kernel unpacks directly.
	Gzip bool
}

// Write writes entries to w as a newc archive followed by the trailer.
// Entries are written sorted by path, each missing parent directory is added
// as a root-owned 0755 directory, and inode numbers are 1, 2, ... in that
// order. It fails on an invalid entry or a path given twice.
func Write(w io.Writer, entries []Entry, opts Options) error {
	return write(w, entries, opts)
}

// TreeEntries returns entries for the tree under the host directory dir,
// placed under prefix in the archive ("" for the archive root). Directories,
// regular files, symlinks and device, fifo and socket nodes keep their mode,
// uid, gid and device numbers; hard links become independent copies; host
// mtimes are dropped. The directory dir itself is not included (use Dir for
// prefix if it needs a mode other than 0755). File contents are read into
// memory, which suits an initramfs of a few megabytes.
func TreeEntries(dir, prefix string) ([]Entry, error) {
	return treeEntries(dir, prefix)
}
