// Package manifest is what the parts of pgwasm agree on about a built
// image, with no dependencies of its own: the image manifest
// (manifest.json), the metadata of a saved state (state-<MB>.json next to
// state-<MB>.bin.zst) and the VM memory rule. The image build writes them
// (internal/image), the VM runner, the CLI and the bench read them
// (internal/vm, internal/cli, cmd/pgwasm-bench), and the page reads the
// image manifest it fetches and the memory rule from web/src/memory.ts,
// which is generated from this package (TestWebMemoryRule keeps it current).
//
// The JSON field names are a file format: images and states written by an
// earlier pgwasm must still load.
package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FileName is the file in the image directory that describes it.
const FileName = "manifest.json"

// Version is the manifest version this pgwasm reads and writes.
const Version = 1

// Agent channels (docs/agent-protocol.md, "Channels"), as Image.AgentChannels
// names them.
const (
	ChannelSerial        = "serial"         // ttyS1
	ChannelVirtioConsole = "virtio-console" // virtio-console port 1, /dev/hvc1
)

// VirtioNetMTU is the MTU a virtio-net image is built with: the relay's
// (relay.DefaultConfig), so a guest TCP segment fills a 9000-byte frame;
// downloads ran 2.3x and uploads 1.6-2.6x as fast as at 1500
// (docs/scenarios.md, "The NIC"). The NE2000 has no such setting.
const VirtioNetMTU = 9000

// Image describes a built image. The harness, the server and the page read
// file names from it rather than assuming them.
type Image struct {
	Version int    `json:"version"`
	Key     string `json:"key"` // hash of all inputs; states record it
	Builder string `json:"builder"`
	Mirror  string `json:"mirror,omitempty"`

	Cmdline   string `json:"cmdline"`
	NetDevice string `json:"net_device"` // v86 NIC type; images from before it use ne2k
	// NetMTU is the MTU v86's virtio-net offers (net_device.mtu), which the
	// guest's virtio_net takes as eth0's when it probes the device: a full
	// boot offers it, a state keeps what its boot took. 0: v86's 1500
	// (the NE2000, virtio images from before it).
	NetMTU int `json:"net_mtu,omitempty"`
	// ACPI starts v86 with its `acpi` option, which gives the guest a
	// local APIC (and v86's ACPI and I/O APIC devices, which our kernel
	// does not use): our kernel takes the APIC's timer as its clock-event
	// device. A state saved with it restores only with it. False for
	// Debian's kernel and images from before it.
	ACPI            bool     `json:"acpi,omitempty"`
	PostgresVersion string   `json:"postgres_version"`
	Modules         []string `json:"modules"`
	// AgentChannels are the channels the guest agent answers on, the
	// host's first choice first: ChannelVirtioConsole (v86 needs the
	// virtio_console device, which a state then depends on) and
	// ChannelSerial. Images from before it answer on serial only.
	AgentChannels []string `json:"agent_channels,omitempty"`

	Kernel  File `json:"kernel"`
	Initrd  File `json:"initrd"`
	BIOS    File `json:"bios"`
	VGABIOS File `json:"vgabios"`
	FS      FS   `json:"fs"`

	// KernelPackage is Debian's kernel package, or for a kernel built from
	// source (KernelBuild set) the source package it was built from.
	KernelPackage Package `json:"kernel_package"`
	// KernelBuild describes our kernel (pgwasm image build --kernel source).
	KernelBuild *KernelBuild `json:"kernel_build,omitempty"`
	Packages    []Package    `json:"packages"`
	// Extensions were compiled for i386 from Debian source packages.
	Extensions []Extension `json:"extensions,omitempty"`
	// Reproducible lists what is byte-for-byte the same on every build
	// from the same inputs; see docs/image.md for what is not.
	Reproducible string `json:"reproducible"`
}

// File is one file of the image.
type File struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// FS describes the v86 9p root tree: fs.json plus a directory of blobs.
type FS struct {
	File       string `json:"file"`     // fs.json, relative to the image directory
	BlobDir    string `json:"blob_dir"` // relative to the image directory
	SHA256     string `json:"sha256"`   // of fs.json
	Files      int    `json:"files"`
	Bytes      int64  `json:"bytes"`      // uncompressed size of all files
	Blobs      int    `json:"blobs"`      // distinct contents
	BlobBytes  int64  `json:"blob_bytes"` // as stored (zstd where smaller)
	Compressed int    `json:"compressed"`
}

// Package is one Debian binary package in the image.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
}

// Extension is one PostgreSQL extension built from source.
type Extension struct {
	Package string          `json:"package"`
	Source  string          `json:"source"`
	Version string          `json:"version"` // Debian source version
	Key     string          `json:"key"`     // the extension build's key of all inputs
	Files   []ExtensionFile `json:"files"`
}

// ExtensionFile is one file an extension build installed.
type ExtensionFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// KernelBuild is a kernel built from Debian's kernel source package with
// guest/kernel/pgwasm.config.
type KernelBuild struct {
	Key          string `json:"key"`           // the kernel build's key of all inputs
	ConfigSHA256 string `json:"config_sha256"` // of the final .config
	Compiler     string `json:"compiler"`      // the cross compiler's --version line
	HostCompiler string `json:"host_compiler"` // the host gcc's, for the build tools
}

// Read reads dir/manifest.json and checks its version and key, not the
// files it names.
func Read(dir string) (*Image, error) {
	path := filepath.Join(dir, FileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image dir %s has no %s: build the image first (pgwasm image build, or make image)", dir, FileName)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the image manifest: %w", err)
	}
	var m Image
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("image manifest %s is corrupt: %w", path, err)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("image manifest %s has version %d, this pgwasm reads version %d: rebuild the image", path, m.Version, Version)
	}
	if m.Key == "" {
		return nil, fmt.Errorf("image manifest %s has no key: rebuild the image", path)
	}
	return &m, nil
}

// Write writes m to dir/manifest.json through a temporary file and a
// rename, so a reader never sees half a manifest.
func (m *Image) Write(dir string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode the manifest: %w", err)
	}
	tmp := filepath.Join(dir, FileName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write the manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, FileName)); err != nil {
		return fmt.Errorf("cannot write the manifest: %w", err)
	}
	return nil
}
