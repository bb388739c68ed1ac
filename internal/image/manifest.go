package image

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/extbuild"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

// complete checks that the files the manifest names are there with the
// recorded sizes (hashing all blobs on every build would cost more than the
// cache saves; sizes catch truncation).
func complete(m *manifest.Image, dir string) error {
	for _, f := range []manifest.File{m.Kernel, m.Initrd, m.BIOS, m.VGABIOS, {File: m.FS.File, Size: -1}} {
		st, err := os.Stat(filepath.Join(dir, f.File))
		if err != nil {
			return err
		}
		if f.Size >= 0 && st.Size() != f.Size {
			return fmt.Errorf("%s has %d bytes, manifest says %d", f.File, st.Size(), f.Size)
		}
	}
	return nil
}

// describe hashes a file of the image directory.
func describe(dir, name string) (manifest.File, error) {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return manifest.File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return manifest.File{}, fmt.Errorf("cannot hash %s: %w", name, err)
	}
	return manifest.File{File: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

// manifestPackages is what the manifest records of the packages.
func manifestPackages(ps []deb.Package) []manifest.Package {
	if ps == nil {
		return nil
	}
	out := make([]manifest.Package, len(ps))
	for i, p := range ps {
		out[i] = p.Package
	}
	return out
}

// extensionInfo records the extensions built from source in the manifest.
func extensionInfo(exts []*extbuild.Result) []manifest.Extension {
	var out []manifest.Extension
	for _, e := range exts {
		var files []manifest.ExtensionFile
		for _, f := range e.Files {
			files = append(files, manifest.ExtensionFile{Path: f.Path, Size: f.Size, SHA256: f.SHA256})
		}
		out = append(out, manifest.Extension{Package: e.Package, Source: e.Source, Version: e.Version, Key: e.Key, Files: files})
	}
	return out
}
