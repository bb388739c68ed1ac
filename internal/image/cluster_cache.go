package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// The VM step's cache entry, <cache>/vmstep/<key[:16]>/:
//
//	data/           the data directory as the guest left it (owner-writable copies)
//	listing.json    every path in data/ with type, mode, owner, size, sha256; the applet list; the key
//	listing.sha256  the sha256 of listing.json
//
// It is written under a temporary name and renamed, and checked whole
// before every reuse: a damaged entry (a crash that left files half-copied,
// a disk error, someone's cleanup) is rebuilt rather than built into an image.
const (
	vmListingVersion = 1
	vmListingName    = "listing.json"
	vmListingSumName = "listing.sha256"
)

type vmListing struct {
	Version int    `json:"version"`
	Key     string `json:"key"`    // the full cache key (the directory name is its prefix)
	Inputs  string `json:"inputs"` // vmStepInputs
	// Applets is `busybox --list-full` ("bin/ls", "usr/sbin/chroot", ...).
	Applets []string `json:"applets"`
	// Entries are the data directory's paths, "." first, parents before
	// children.
	Entries []vmEntry `json:"entries"`
}

type vmEntry struct {
	Path   string `json:"path"` // relative to the data directory, "/"-separated
	Type   string `json:"type"` // dir, file or symlink
	Mode   uint32 `json:"mode"` // Unix permission bits incl. setuid, setgid, sticky
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Target string `json:"target,omitempty"`
}

// commitVMStep checksums the exported tree in tmp/data, writes the listing
// and renames tmp to entry.
func commitVMStep(tmp, entry string, l *vmListing) error {
	data := filepath.Join(tmp, "data")
	for i := range l.Entries {
		e := &l.Entries[i]
		if e.Type != "file" {
			continue
		}
		sum, size, err := rootfs.HashFile(filepath.Join(data, filepath.FromSlash(e.Path)))
		if err != nil {
			return fmt.Errorf("VM step: %w", err)
		}
		if size != e.Size {
			return fmt.Errorf("VM step: %s was exported with %d bytes, the guest had %d", e.Path, size, e.Size)
		}
		e.SHA256 = sum
	}
	if err := verifyVMTree(data, l.Entries); err != nil {
		return fmt.Errorf("VM step: the exported data directory does not match its listing: %w", err)
	}
	body, err := json.MarshalIndent(l, "", " ")
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	if err := os.WriteFile(filepath.Join(tmp, vmListingName), body, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, vmListingSumName), []byte(hex.EncodeToString(sum[:])+"\n"), 0o644); err != nil {
		return err
	}
	// A build of the same inputs that finished first wins; its entry is as
	// good as this one and may be in use.
	if _, err := loadVMStep(entry, l.Key, l.Inputs); err == nil {
		return os.RemoveAll(tmp)
	}
	if err := os.RemoveAll(entry); err != nil {
		return err
	}
	if err := os.Rename(tmp, entry); err != nil {
		return fmt.Errorf("cannot store the VM step's result: %w", err)
	}
	return nil
}

// loadVMStep reads and checks a cache entry. An error that is
// fs.ErrNotExist means there is none; any other means it is unusable.
func loadVMStep(entry, key, inputs string) (*vmListing, error) {
	if _, err := os.Stat(entry); err != nil {
		return nil, err
	}
	damaged := func(format string, a ...any) error {
		return fmt.Errorf("%s: %s", entry, fmt.Sprintf(format, a...))
	}
	body, err := os.ReadFile(filepath.Join(entry, vmListingName))
	if err != nil {
		return nil, damaged("no listing: %v", err)
	}
	want, err := os.ReadFile(filepath.Join(entry, vmListingSumName))
	if err != nil {
		return nil, damaged("no listing checksum: %v", err)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != string(bytes.TrimSpace(want)) {
		return nil, damaged("listing checksum %s, want %s", got, bytes.TrimSpace(want))
	}
	var l vmListing
	if err := json.Unmarshal(body, &l); err != nil {
		return nil, damaged("listing: %v", err)
	}
	switch {
	case l.Version != vmListingVersion:
		return nil, damaged("listing version %d, want %d", l.Version, vmListingVersion)
	case l.Key != key:
		return nil, damaged("made for key %.16s..., want %.16s...", l.Key, key)
	case l.Inputs != inputs:
		return nil, damaged("made from other build-step inputs")
	case len(l.Applets) == 0:
		return nil, damaged("no applet list")
	}
	for _, e := range l.Entries {
		if e.Type == "file" && len(e.SHA256) != 64 {
			return nil, damaged("%s has no checksum", e.Path)
		}
	}
	if err := verifyVMTree(filepath.Join(entry, "data"), l.Entries); err != nil {
		return nil, damaged("%v", err)
	}
	return &l, nil
}

// verifyVMTree checks that dir holds exactly the entries: the same paths and
// types, files with their size and (when listed) sha256, symlinks with their
// target.
func verifyVMTree(dir string, entries []vmEntry) error {
	if len(entries) == 0 || entries[0].Path != "." || entries[0].Type != "dir" {
		return errors.New("the listing does not start with the directory itself")
	}
	byPath := make(map[string]vmEntry, len(entries))
	for _, e := range entries {
		if e.Path != "." && (!fs.ValidPath(e.Path) || path.Clean(e.Path) != e.Path) {
			return fmt.Errorf("bad path %q in the listing", e.Path)
		}
		if _, dup := byPath[e.Path]; dup {
			return fmt.Errorf("%s is listed twice", e.Path)
		}
		byPath[e.Path] = e
	}
	seen := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		e, ok := byPath[rel]
		if !ok {
			return fmt.Errorf("%s is not in the listing", rel)
		}
		seen++
		switch {
		case d.IsDir():
			if e.Type != "dir" {
				return fmt.Errorf("%s is a directory, listed as %s", rel, e.Type)
			}
		case d.Type().IsRegular():
			if e.Type != "file" {
				return fmt.Errorf("%s is a file, listed as %s", rel, e.Type)
			}
			if e.SHA256 == "" {
				info, err := d.Info()
				if err != nil {
					return err
				}
				if info.Size() != e.Size {
					return fmt.Errorf("%s has %d bytes, want %d", rel, info.Size(), e.Size)
				}
				return nil
			}
			sum, size, err := rootfs.HashFile(p)
			if err != nil {
				return err
			}
			if size != e.Size || sum != e.SHA256 {
				return fmt.Errorf("%s has %d bytes with sha256 %.12s..., want %d bytes with %.12s...", rel, size, sum, e.Size, e.SHA256)
			}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if e.Type != "symlink" || target != e.Target {
				return fmt.Errorf("%s is a symlink to %s, listed as %s %s", rel, target, e.Type, e.Target)
			}
		default:
			return fmt.Errorf("%s is neither a file, a directory nor a symlink", rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(entries) {
		return fmt.Errorf("%d of %d listed paths are missing", len(entries)-seen, len(entries))
	}
	return nil
}
