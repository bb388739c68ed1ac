package deb

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// Unpack extracts a package's files into root without root privileges and
// records each file's owner and mode, as the package's archive headers give
// them, in meta (nil: not recorded).
//
// dpkg-deb -x, run by an ordinary user, would create every file owned by that
// user and fail on modes it cannot keep (a directory without write
// permission cannot be filled afterwards). So dpkg-deb only decompresses
// (--fsys-tarfile, which works for anybody and for every compression Debian
// uses) and the tar headers are applied here: host files are always
// readable and writable by the build user, and the image takes owners and
// modes from meta (ninep.Options.Meta).
func Unpack(ctx context.Context, debPath, root string, meta rootfs.Metas) error {
	cmd, err := hostexec.Command(ctx, "dpkg-deb", "--fsys-tarfile", debPath)
	if err != nil {
		return fmt.Errorf("cannot unpack %s: %w", filepath.Base(debPath), err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot unpack %s: %w", filepath.Base(debPath), err)
	}
	uerr := extract(tar.NewReader(out), root, meta)
	// Drain what is left so dpkg-deb does not die of a broken pipe and hide
	// the real error behind it.
	io.Copy(io.Discard, out)
	werr := cmd.Wait()
	switch {
	case werr != nil:
		return fmt.Errorf("cannot unpack %s: dpkg-deb: %w: %s", filepath.Base(debPath), werr, rootfs.Tail(stderr.Bytes(), 3))
	case uerr != nil:
		return fmt.Errorf("cannot unpack %s: %w", filepath.Base(debPath), uerr)
	}
	return nil
}

// extract writes a package's data tar into root. Entries may not leave root,
// neither by their names nor through a symlink an earlier entry made.
func extract(tr *tar.Reader, root string, meta rootfs.Metas) error {
	safeDirs := map[string]bool{"": true}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("bad data archive: %w", err)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue // the archive's "./"
		}
		if err := checkParents(root, name, safeDirs); err != nil {
			return err
		}
		if isSparse(hdr) {
			// A few bytes of sparse map can claim gigabytes of holes; no
			// Debian package ships one.
			return fmt.Errorf("archive entry /%s is a sparse file, which packages never contain", name)
		}
		host := filepath.Join(root, filepath.FromSlash(name))
		mode := rootfs.ModeFromUnix(uint32(hdr.Mode))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(host, mode.Perm()|0o700); err != nil {
				return fmt.Errorf("cannot create /%s: %w", name, err)
			}
			if err := os.Chmod(host, mode.Perm()|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := writeEntry(host, tr, mode.Perm()|0o600); err != nil {
				return fmt.Errorf("cannot write /%s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := replaceWith(host, func() error { return os.Symlink(hdr.Linkname, host) }); err != nil {
				return fmt.Errorf("cannot link /%s: %w", name, err)
			}
		case tar.TypeLink:
			target, err := entryName(hdr.Linkname)
			if err != nil || target == "" {
				return fmt.Errorf("hard link /%s to %q: bad target", name, hdr.Linkname)
			}
			if err := checkParents(root, target, safeDirs); err != nil {
				return err
			}
			from := filepath.Join(root, filepath.FromSlash(target))
			if err := replaceWith(host, func() error { return os.Link(from, host) }); err != nil {
				return fmt.Errorf("cannot link /%s to /%s: %w", name, target, err)
			}
			if m, ok := meta[target]; ok && meta != nil {
				meta[name] = m
			}
			continue
		default:
			// Device nodes and fifos: no Debian package the image uses ships
			// one, and the 9p tree could not carry it.
			continue
		}
		if meta != nil {
			meta[name] = rootfs.Meta{UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), Mode: mode}
		}
	}
}

// entryName cleans a tar entry name ("./usr/bin/x") into a path relative to
// the root ("usr/bin/x"), refusing names that leave it.
func entryName(n string) (string, error) {
	clean := path.Clean("/" + n)
	if clean == "/" {
		return "", nil
	}
	for _, part := range strings.Split(strings.TrimPrefix(path.Clean(n), "./"), "/") {
		if part == ".." {
			return "", fmt.Errorf("archive entry %q leaves the root", n)
		}
	}
	return clean[1:], nil
}

// checkParents refuses an entry whose parent directories are not real
// directories under root: a symlink there (from this or an earlier package)
// would carry the write outside the root.
func checkParents(root, name string, safe map[string]bool) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	var todo []string
	for d := dir; d != "." && !safe[d]; d = path.Dir(d) {
		todo = append(todo, d)
	}
	for i := len(todo) - 1; i >= 0; i-- {
		d := todo[i]
		st, err := os.Lstat(filepath.Join(root, filepath.FromSlash(d)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Archives list directories before their contents, but be lenient.
			if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(d)), 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case !st.IsDir():
			return fmt.Errorf("archive entry /%s: /%s is not a directory (a symlink?), refusing to write through it", name, d)
		}
		safe[d] = true
	}
	return nil
}

// replaceWith removes whatever non-directory is at host, then calls create.
func replaceWith(host string, create func() error) error {
	if st, err := os.Lstat(host); err == nil {
		if st.IsDir() {
			return errors.New("a directory is in the way")
		}
		if err := os.Remove(host); err != nil {
			return err
		}
	}
	return create()
}

func writeEntry(host string, r io.Reader, perm fs.FileMode) error {
	return replaceWith(host, func() error {
		f, err := os.OpenFile(host, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Chmod(host, perm)
	})
}

func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
