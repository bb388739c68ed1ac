package cpio

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	ucpio "github.com/u-root/u-root/pkg/cpio"
)

func write(w io.Writer, entries []Entry, opts Options) error {
	sorted, err := normalize(entries)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	var out io.Writer = bw
	var zw *gzip.Writer
	if opts.Gzip {
		// A zero Header has no name, no comment and mtime 0, so the gzip
		// wrapper adds nothing that varies between builds.
		zw, err = gzip.NewWriterLevel(bw, gzip.BestCompression)
		if err != nil {
			return fmt.Errorf("cannot create gzip writer: %w", err)
		}
		out = zw
	}
	rw := ucpio.Newc.Writer(out)
	for i, e := range sorted {
		if err := rw.WriteRecord(record(e, uint64(i+1), opts.MTime)); err != nil {
			return fmt.Errorf("cannot write cpio entry %q: %w", e.Path, err)
		}
	}
	if err := ucpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("cannot write cpio trailer: %w", err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return fmt.Errorf("cannot finish gzip stream: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("cannot write cpio archive: %w", err)
	}
	return nil
}

// record builds the u-root record for e. Every header field is set from e,
// ino and mtime, so nothing of the host leaks into the archive.
func record(e Entry, ino uint64, mtime uint32) ucpio.Record {
	nlink := uint64(1)
	if e.Mode&TypeMask == TypeDir {
		nlink = 2
	}
	info := ucpio.Info{
		Ino:    ino,
		Mode:   uint64(e.Mode),
		UID:    uint64(e.UID),
		GID:    uint64(e.GID),
		NLink:  nlink,
		MTime:  uint64(mtime),
		Rmajor: uint64(e.Major),
		Rminor: uint64(e.Minor),
		Name:   e.Path,
	}
	switch e.Mode & TypeMask {
	case TypeFile:
		return ucpio.StaticRecord(e.Data, info)
	case TypeLink:
		return ucpio.StaticRecord([]byte(e.Target), info)
	default:
		return ucpio.Record{Info: info}
	}
}

// normalize validates entries and returns a sorted copy with clean paths and
// the missing parent directories added.
func normalize(entries []Entry) ([]Entry, error) {
	byPath := make(map[string]Entry, len(entries))
	for _, e := range entries {
		p, err := cleanPath(e.Path)
		if err != nil {
			return nil, err
		}
		e.Path = p
		if err := validate(e); err != nil {
			return nil, fmt.Errorf("invalid cpio entry %q: %w", p, err)
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("invalid cpio entry %q: path given twice", p)
		}
		byPath[p] = e
	}
	for p := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parent, ok := byPath[d]
			if !ok {
				byPath[d] = Dir(d, 0o755)
				continue
			}
			if parent.Mode&TypeMask != TypeDir {
				return nil, fmt.Errorf("invalid cpio entry %q: parent %q is not a directory", p, d)
			}
		}
	}
	out := make([]Entry, 0, len(byPath))
	for _, e := range byPath {
		out = append(out, e)
	}
	// Byte order puts every directory before its children, as the kernel
	// needs: a parent's path is a prefix of its children's paths.
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func cleanPath(p string) (string, error) {
	rel := strings.TrimLeft(p, "/")
	if rel == "" || strings.ContainsRune(rel, 0) || path.Clean(rel) != strings.TrimRight(rel, "/") {
		return "", fmt.Errorf("invalid cpio path %q", p)
	}
	for _, el := range strings.Split(path.Clean(rel), "/") {
		if el == "." || el == ".." {
			return "", fmt.Errorf("invalid cpio path %q", p)
		}
	}
	if path.Clean(rel) == ucpio.Trailer {
		return "", fmt.Errorf("invalid cpio path %q: reserved for the trailer", p)
	}
	return path.Clean(rel), nil
}

func validate(e Entry) error {
	if e.Mode&^(TypeMask|0o7777) != 0 {
		return fmt.Errorf("mode %#o has unknown bits", e.Mode)
	}
	t := e.Mode & TypeMask
	switch t {
	case TypeFile, TypeDir, TypeLink, TypeChar, TypeBlock, TypeFIFO, TypeSocket:
	default:
		return fmt.Errorf("mode %#o has no valid file type", e.Mode)
	}
	if t != TypeFile && e.Data != nil {
		return errors.New("only regular files have data")
	}
	if uint64(len(e.Data)) > math.MaxUint32 {
		return errors.New("file larger than 4 GiB")
	}
	if (t == TypeLink) != (e.Target != "") {
		return errors.New("a symlink needs a target and only a symlink has one")
	}
	if t != TypeChar && t != TypeBlock && (e.Major != 0 || e.Minor != 0) {
		return errors.New("only device nodes have device numbers")
	}
	return nil
}

func treeEntries(dir, prefix string) ([]Entry, error) {
	prefix = strings.Trim(prefix, "/")
	var out []Entry
	err := filepath.WalkDir(dir, func(hostPath string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("cannot walk %s: %w", hostPath, err)
		}
		rel, err := filepath.Rel(dir, hostPath)
		if err != nil {
			return fmt.Errorf("cannot place %s under %s: %w", hostPath, dir, err)
		}
		if rel == "." {
			return nil
		}
		e, err := hostEntry(hostPath)
		if err != nil {
			return err
		}
		e.Path = path.Join(prefix, filepath.ToSlash(rel))
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func hostEntry(hostPath string) (Entry, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(hostPath, &st); err != nil {
		return Entry{}, fmt.Errorf("cannot stat %s: %w", hostPath, err)
	}
	e := Entry{Mode: uint32(st.Mode), UID: st.Uid, GID: st.Gid}
	switch e.Mode & TypeMask {
	case TypeFile:
		data, err := os.ReadFile(hostPath)
		if err != nil {
			return Entry{}, fmt.Errorf("cannot read %s: %w", hostPath, err)
		}
		if data == nil {
			data = []byte{}
		}
		e.Data = data
	case TypeLink:
		target, err := os.Readlink(hostPath)
		if err != nil {
			return Entry{}, fmt.Errorf("cannot read link %s: %w", hostPath, err)
		}
		e.Target = target
	case TypeChar, TypeBlock:
		e.Major = uint32(unixMajor(uint64(st.Rdev)))
		e.Minor = uint32(unixMinor(uint64(st.Rdev)))
	}
	return e, nil
}

// unixMajor and unixMinor decode a Linux dev_t (glibc's encoding).
func unixMajor(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^0xfff }
func unixMinor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^0xff }
