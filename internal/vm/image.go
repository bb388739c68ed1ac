package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// fileRef is one file of the image as the manifest lists it.
type fileRef struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// fsRef is the v86 9p tree: fs.json plus a directory of blobs.
type fsRef struct {
	File      string `json:"file"`
	BlobDir   string `json:"blob_dir"`
	Files     int64  `json:"files"`
	Bytes     int64  `json:"bytes"`
	BlobBytes int64  `json:"blob_bytes"`
}

// manifest is the part of the image's manifest.json that running it needs.
type manifest struct {
	Version         int     `json:"version"`
	Key             string  `json:"key"`
	Cmdline         string  `json:"cmdline"`
	Kernel          fileRef `json:"kernel"`
	Initrd          fileRef `json:"initrd"`
	BIOS            fileRef `json:"bios"`
	VGABIOS         fileRef `json:"vgabios"`
	FS              fsRef   `json:"fs"`
	NetDevice       string  `json:"net_device"`
	PostgresVersion string  `json:"postgres_version"`
	// AgentChannels are the agent's channels, the first choice first;
	// images from before the field answer on serial only.
	AgentChannels []string `json:"agent_channels"`
}

// Agent channels (docs/agent-protocol.md, "Channels").
const (
	ChannelSerial        = "serial"         // ttyS1
	ChannelVirtioConsole = "virtio-console" // virtio-console port 1, /dev/hvc1
)

// AgentChannels are the channels the image's agent answers on, the first
// choice first.
func (img *Image) AgentChannels() []string { return img.manifest.AgentChannels }

// virtioConsole says whether the image's VM has v86's virtio-console
// device: its states hold the device, so every restore must have it too.
func (img *Image) virtioConsole() bool {
	return slices.Contains(img.manifest.AgentChannels, ChannelVirtioConsole)
}

// Image is a built VM image directory (pgwasm image build), checked complete.
type Image struct {
	Dir      string
	manifest manifest
}

// Key is the image's content key: the sha256 of every input of the build.
func (img *Image) Key() string { return img.manifest.Key }

func (img *Image) path(name string) string { return filepath.Join(img.Dir, name) }

// bootFiles are the files a full boot of the image loads.
func (img *Image) bootFiles() BootFiles {
	m := img.manifest
	return BootFiles{
		Kernel: img.path(m.Kernel.File), Initrd: img.path(m.Initrd.File),
		BIOS: img.path(m.BIOS.File), VGABIOS: img.path(m.VGABIOS.File),
		FSJSON: img.path(m.FS.File), BlobDir: img.path(m.FS.BlobDir),
		Cmdline: m.Cmdline, NetDevice: m.NetDevice,
		VirtioConsole: img.virtioConsole(),
	}
}

// StatePath is where the snapshot for a memory size lives in the image dir.
func (img *Image) StatePath(memoryMB int) string {
	return img.path("state-" + strconv.Itoa(memoryMB) + ".bin.zst")
}

// LoadImage reads dir/manifest.json and checks that every file it names is
// there, so a half-built image fails here with a clear message rather than
// inside the emulator.
func LoadImage(dir string) (*Image, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image dir %s: %w", dir, err)
	}
	data, err := os.ReadFile(filepath.Join(abs, "manifest.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image dir %s has no manifest.json: build the image first (pgwasm image build, or make image)", abs)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read image manifest: %w", err)
	}
	img := &Image{Dir: abs}
	if err := json.Unmarshal(data, &img.manifest); err != nil {
		return nil, fmt.Errorf("image manifest %s: %w", filepath.Join(abs, "manifest.json"), err)
	}
	m := &img.manifest
	if m.Version != 1 {
		return nil, fmt.Errorf("image manifest version %d, this pgwasm reads version 1: rebuild the image", m.Version)
	}
	if m.Key == "" {
		return nil, errors.New("image manifest has no key: rebuild the image")
	}
	if m.NetDevice == "" {
		m.NetDevice = "ne2k"
	}
	if len(m.AgentChannels) == 0 {
		m.AgentChannels = []string{ChannelSerial}
	}
	for _, f := range []struct{ what, name string }{
		{"kernel", m.Kernel.File},
		{"initrd", m.Initrd.File},
		{"bios", m.BIOS.File},
		{"vgabios", m.VGABIOS.File},
		{"fs", m.FS.File},
		{"fs.blob_dir", m.FS.BlobDir},
	} {
		if f.name == "" {
			return nil, fmt.Errorf("image manifest %s: %s is not set: rebuild the image", abs, f.what)
		}
		if _, err := os.Stat(img.path(f.name)); err != nil {
			return nil, fmt.Errorf("image %s is incomplete (%s): rebuild it with pgwasm image build: %w", abs, f.what, err)
		}
	}
	return img, nil
}
