package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/extbuild"
)

// ManifestName is the file in the image directory that describes it.
const ManifestName = "manifest.json"

// Manifest describes a built image. The harness and the server read file
// names from it rather than assuming them.
type Manifest struct {
	Version int    `json:"version"`
	Key     string `json:"key"` // hash of all inputs; states record it
	Builder string `json:"builder"`
	Mirror  string `json:"mirror,omitempty"`

	Cmdline         string   `json:"cmdline"`
	NetDevice       string   `json:"net_device"`
	PostgresVersion string   `json:"postgres_version"`
	Modules         []string `json:"modules"`
	// AgentChannels are the channels the guest agent answers on, the
	// host's first choice first: "virtio-console" (v86 needs the
	// virtio_console device, which a state then depends on) and "serial"
	// (ttyS1). Images from before it answer on serial only
	// (docs/agent-protocol.md, "Channels").
	AgentChannels []string `json:"agent_channels,omitempty"`

	Kernel  File   `json:"kernel"`
	Initrd  File   `json:"initrd"`
	BIOS    File   `json:"bios"`
	VGABIOS File   `json:"vgabios"`
	FS      FSInfo `json:"fs"`

	// KernelPackage is Debian's kernel package, or for a kernel built from
	// source (KernelBuild set) the source package it was built from.
	KernelPackage deb.Package `json:"kernel_package"`
	// KernelBuild describes our kernel (pgwasm image build --kernel source).
	KernelBuild *KernelBuild  `json:"kernel_build,omitempty"`
	Packages    []deb.Package `json:"packages"`
	// Extensions were compiled for i386 from Debian source packages.
	Extensions []Extension `json:"extensions,omitempty"`
	// Reproducible lists what is byte-for-byte the same on every build
	// from the same inputs; see docs/image.md for what is not.
	Reproducible string `json:"reproducible"`
}

// Extension is one PostgreSQL extension built from source (extbuild).
type Extension struct {
	Package string          `json:"package"`
	Source  string          `json:"source"`
	Version string          `json:"version"` // Debian source version
	Key     string          `json:"key"`     // extbuild's key of all inputs
	Files   []extbuild.File `json:"files"`
}

// KernelBuild is a kernel built from Debian's kernel source package with
// guest/kernel/pgwasm.config (internal/image/kernelbuild).
type KernelBuild struct {
	Key          string `json:"key"`           // kernelbuild's key of all inputs
	ConfigSHA256 string `json:"config_sha256"` // of the final .config
	Compiler     string `json:"compiler"`      // the cross compiler's --version line
	HostCompiler string `json:"host_compiler"` // the host gcc's, for the build tools
}

// File is one file of the image.
type File struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// FSInfo describes the 9p root tree.
type FSInfo struct {
	File       string `json:"file"`     // fs.json, relative to the image directory
	BlobDir    string `json:"blob_dir"` // relative to the image directory
	SHA256     string `json:"sha256"`   // of fs.json
	Files      int    `json:"files"`
	Bytes      int64  `json:"bytes"`      // uncompressed size of all files
	Blobs      int    `json:"blobs"`      // distinct contents
	BlobBytes  int64  `json:"blob_bytes"` // as stored (zstd where smaller)
	Compressed int    `json:"compressed"`
}

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("cannot read the image manifest (build it with pgwasm image build): %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("image manifest %s is corrupt: %w", filepath.Join(dir, ManifestName), err)
	}
	if m.Version != 1 || m.Key == "" {
		return nil, fmt.Errorf("image manifest %s: unsupported version %d", filepath.Join(dir, ManifestName), m.Version)
	}
	return &m, nil
}

// complete checks that the files the manifest names are there with the
// recorded sizes (hashing all blobs on every build would cost more than the
// cache saves; sizes catch truncation).
func (m *Manifest) complete(dir string) error {
	for _, f := range []File{m.Kernel, m.Initrd, m.BIOS, m.VGABIOS, {File: m.FS.File, Size: -1}} {
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

func (m *Manifest) write(dir string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ManifestName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write the manifest: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, ManifestName))
}

// describe hashes a file of the image directory.
func describe(dir, name string) (File, error) {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, fmt.Errorf("cannot hash %s: %w", name, err)
	}
	return File{File: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}
