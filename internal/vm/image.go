package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// AgentChannels are the channels the image's agent answers on, the first
// choice first.
func (img *Image) AgentChannels() []string { return img.manifest.AgentChannels }

// virtioConsole says whether the image's VM has v86's virtio-console
// device: its states hold the device, so every restore must have it too.
func (img *Image) virtioConsole() bool {
	return slices.Contains(img.manifest.AgentChannels, manifest.ChannelVirtioConsole)
}

// Image is a built VM image directory (pgwasm image build), checked complete.
type Image struct {
	Dir      string
	manifest manifest.Image
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
		Cmdline: m.Cmdline, NetDevice: m.NetDevice, NetMTU: m.NetMTU, ACPI: m.ACPI,
		VirtioConsole: img.virtioConsole(),
	}
}

// StatePath is where the snapshot for a memory size lives in the image dir.
func (img *Image) StatePath(memoryMB int) string { return manifest.StatePath(img.Dir, memoryMB) }

// LoadImage reads dir/manifest.json and checks that every file it names is
// there, so a half-built image fails here with a clear message rather than
// inside the emulator.
func LoadImage(dir string) (*Image, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image dir %s: %w", dir, err)
	}
	m, err := manifest.Read(abs)
	if err != nil {
		return nil, err
	}
	img := &Image{Dir: abs, manifest: *m}
	m = &img.manifest
	if m.NetDevice == "" {
		m.NetDevice = "ne2k"
	}
	if len(m.AgentChannels) == 0 {
		m.AgentChannels = []string{manifest.ChannelSerial}
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
