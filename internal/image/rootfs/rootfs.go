// Package rootfs holds the steps shared by the trees the image builder
// unpacks Debian packages into: the VM's root and the extension build root.
package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MergeUsr makes /bin, /sbin and /lib symlinks into /usr, as on every current
// Debian system: packages unpacked by dpkg-deb alone (no base-files, no
// usrmerge) may still ship files under the old paths, and i386 binaries look
// for their loader at /lib/ld-linux.so.2.
//
// meta, if not nil, follows the files that move.
func MergeUsr(root string, meta Metas) error {
	for _, d := range []string{"bin", "sbin", "lib"} {
		top, usr := filepath.Join(root, d), filepath.Join(root, "usr", d)
		if err := os.MkdirAll(usr, 0o755); err != nil {
			return fmt.Errorf("cannot create /usr/%s: %w", d, err)
		}
		st, err := os.Lstat(top)
		switch {
		case err == nil && st.IsDir():
			entries, err := os.ReadDir(top)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if err := os.Rename(filepath.Join(top, e.Name()), filepath.Join(usr, e.Name())); err != nil {
					return fmt.Errorf("cannot merge /%s/%s into /usr: %w", d, e.Name(), err)
				}
			}
			meta.move(d, "usr/"+d)
			if err := os.Remove(top); err != nil {
				return err
			}
		case err == nil:
			continue // already a symlink
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
		if err := os.Symlink("usr/"+d, top); err != nil {
			return fmt.Errorf("cannot link /%s: %w", d, err)
		}
	}
	return nil
}

// Tail returns the last n lines of a command's output on one line, for
// error messages.
func Tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Meta is a file's owner and mode as the image has them. An unprivileged
// build cannot chown, and the host file system's owners say who ran the
// build, so the pipeline carries them next to the tree instead: from the
// packages' archive headers, from the steps that add files, and from the VM
// that ran initdb.
type Meta struct {
	UID, GID uint32
	// Mode holds the permission bits and fs.ModeSetuid, fs.ModeSetgid and
	// fs.ModeSticky; the file type comes from the tree itself.
	Mode fs.FileMode
}

// Metas maps paths relative to the root, slash-separated and without a
// leading slash ("usr/bin/su"), to their Meta. A path it lacks belongs to
// root:root with the host file's permission bits.
type Metas map[string]Meta

// move renames from and everything under it to to.
func (m Metas) move(from, to string) {
	for p, v := range m {
		if rest, ok := strings.CutPrefix(p, from); ok && (rest == "" || rest[0] == '/') {
			delete(m, p)
			if rest != "" { // the directory itself becomes a symlink
				m[to+rest] = v
			}
		}
	}
}

// ModeFromUnix turns Unix mode bits (permissions, setuid, setgid, sticky), as
// tar headers and v86's 9p inodes hold them, into a Meta's Mode.
func ModeFromUnix(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// UnixMode is ModeFromUnix's inverse, for fs.json.
func UnixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// Sums lists every regular file and symlink under dir, sorted, each with its
// SHA-256 or link target: a cached tree is reused only while its Sums still
// match the ones written when it was made.
func Sums(dir string) (string, error) {
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || d.IsDir() || strings.HasPrefix(rel, ".") {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "link %s -> %s\n", filepath.ToSlash(rel), t)
		case d.Type().IsRegular():
			sum, _, err := HashFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s %s\n", sum, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("cannot checksum %s: %w", dir, err)
	}
	return b.String(), nil
}

// HashFile returns a file's SHA-256 (hex) and size: the check every cache of
// the pipeline makes before it trusts a file.
func HashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("cannot read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
