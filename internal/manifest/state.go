package manifest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// State describes a saved state; it is written next to the state file
// (state-128.bin.zst -> state-128.json). A v86 state restores only on the
// same 9p tree (unmodified files are stored as references), memory size,
// VGA memory size and devices, so those are what it records.
type State struct {
	ImageKey    string `json:"image_key"`
	MemoryMB    int    `json:"memory_mb"`
	VGAMemoryMB int    `json:"vga_memory_mb"`
	NetDevice   string `json:"net_device"`
	// VirtioConsole: the machine had v86's virtio-console device (the
	// agent's fast channel).
	VirtioConsole bool   `json:"virtio_console,omitempty"`
	V86Version    string `json:"v86_version"`
	File          string `json:"file"`
	Size          int64  `json:"size"`
	SHA256        string `json:"sha256"`
	RawSize       int64  `json:"raw_size"`
}

// StatePath is where the image's snapshot for a memory size lives in the
// image directory dir.
func StatePath(dir string, memoryMB int) string {
	return filepath.Join(dir, "state-"+strconv.Itoa(memoryMB)+".bin.zst")
}

// MetaPath is the metadata file of a state file.
func MetaPath(statePath string) string {
	if p, ok := strings.CutSuffix(statePath, ".bin.zst"); ok {
		return p + ".json"
	}
	return statePath + ".json"
}

// ReadState reads the metadata of a state; it returns fs.ErrNotExist
// (wrapped) when there is none.
func ReadState(statePath string) (*State, error) {
	data, err := os.ReadFile(MetaPath(statePath))
	if err != nil {
		return nil, fmt.Errorf("cannot read state metadata: %w", err)
	}
	var m State
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("state metadata %s: %w", MetaPath(statePath), err)
	}
	return &m, nil
}
