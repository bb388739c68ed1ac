// Package rootfs holds the steps shared by the trees the image builder
// unpacks Debian packages into: the VM's root and the extension build root.
package rootfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// MergeUsr makes /bin, /sbin and /lib symlinks into /usr, as on every current
// Debian system: packages unpacked by dpkg-deb alone (no base-files, no
// usrmerge) may still ship files under the old paths, and i386 binaries look
// for their loader at /lib/ld-linux.so.2.
func MergeUsr(root string) error {
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
