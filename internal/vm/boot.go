package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// BootFiles are what a full boot loads. Start takes them from the image's
// manifest; the image build names them itself, since it boots the image
// before there is a manifest (Boot).
type BootFiles struct {
	Kernel, Initrd  string // bzImage, initrd.img
	BIOS, VGABIOS   string // bios.bin, vgabios.bin
	FSJSON, BlobDir string // the 9p tree: fs.json and its blob directory
	Cmdline         string // kernel command line
	NetDevice       string // v86 NIC type; "" means ne2k
	NetMTU          int    // virtio-net's offered MTU (manifest.Image.NetMTU); 0: v86's default
	ACPI            bool   // v86's acpi option: the guest's local APIC (manifest.Image.ACPI)
	// VirtioConsole gives v86 the virtio-console device (the agent's fast
	// channel); a state saved with it restores only with it.
	VirtioConsole bool
}

// BootOptions says what Boot runs.
type BootOptions struct {
	Files      BootFiles
	Memory     int    // MB; 0 means manifest.DefaultMemoryMB
	HarnessDir string // directory of vm.mjs; found automatically when empty
	Node       string // node executable; "node" from PATH when empty
	Logger     *slog.Logger
	// OnConsole, if set, gets every whole line the guest prints on ttyS0.
	// It is called from the harness's reader and must not block.
	OnConsole func(line string)
}

// Boot full-boots explicit files without a network and returns as soon as
// the emulated CPU runs: it waits for neither the guest agent nor
// PostgreSQL. The image build runs its steps inside the image this way
// (internal/image, runInVM) and follows them on the console; the agent's
// methods (Query, Exec, Request, ReadFile, SaveState) need a guest that
// starts the agent. Close the VM when done.
func Boot(ctx context.Context, opts BootOptions) (*VM, error) {
	t0 := time.Now()
	logger, harnessDir, v86ver, err := prepare(opts.Logger, opts.HarnessDir)
	if err != nil {
		return nil, err
	}
	mem := opts.Memory
	if mem == 0 {
		mem = manifest.DefaultMemoryMB
	}
	if err := manifest.CheckMemory(mem); err != nil {
		return nil, err
	}
	files := opts.Files
	// The harness runs in its own directory.
	for _, p := range []*string{&files.Kernel, &files.Initrd, &files.BIOS, &files.VGABIOS, &files.FSJSON, &files.BlobDir} {
		if *p, err = filepath.Abs(*p); err != nil {
			return nil, err
		}
	}
	if files.NetDevice == "" {
		files.NetDevice = "ne2k"
	}
	v := &VM{logger: logger, memoryMB: mem, v86: v86ver, t0: t0}
	v.timings.Mode = "full_boot"
	v.h, err = startHarness(ctx, nodeName(opts.Node), harnessDir, logger, v.onEvent, opts.OnConsole)
	if err != nil {
		return nil, err
	}
	if err := v.startEmulator(ctx, harnessDir, files, "", "", manifest.ChannelSerial); err != nil {
		closeCtx, c := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer c()
		_ = v.h.close(closeCtx)
		return nil, err
	}
	return v, nil
}

// prepare settles what Start and Boot share: a logger, the harness
// directory and its v86 version.
func prepare(logger *slog.Logger, harnessDir string) (*slog.Logger, string, string, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir, err := FindHarness(harnessDir)
	if err != nil {
		return nil, "", "", err
	}
	v86ver, err := v86Version(dir)
	if err != nil {
		return nil, "", "", err
	}
	return logger, dir, v86ver, nil
}

func nodeName(node string) string {
	if node == "" {
		return "node"
	}
	return node
}

// startEmulator sends the harness's start: a full boot of files, or a
// restore of statePath over them, with agent requests going to channel.
func (v *VM) startEmulator(ctx context.Context, harnessDir string, files BootFiles, statePath, relayURL, channel string) error {
	fields := map[string]any{
		"wasm_path":      filepath.Join(harnessDir, "node_modules", "v86", "build", "v86.wasm"),
		"bios":           files.BIOS,
		"vga_bios":       files.VGABIOS,
		"bzimage":        files.Kernel,
		"initrd":         files.Initrd,
		"cmdline":        files.Cmdline,
		"fs_json":        files.FSJSON,
		"blob_dir":       files.BlobDir,
		"memory_mb":      v.memoryMB,
		"vga_memory_mb":  manifest.VGAMemoryMB,
		"net_device":     files.NetDevice,
		"virtio_console": files.VirtioConsole,
		"agent_channel":  channel,
	}
	if statePath != "" {
		fields["state_path"] = statePath
	}
	if relayURL != "" {
		fields["relay_url"] = relayURL
	}
	if files.NetDevice == "virtio" && files.NetMTU > 0 {
		fields["net_mtu"] = files.NetMTU
	}
	if files.ACPI {
		fields["acpi"] = true
	}
	if _, err := v.h.call(ctx, "start", fields); err != nil {
		return err
	}
	v.mu.Lock()
	v.timings.EmulatorStarted = v.since()
	v.mu.Unlock()
	return nil
}

// TreeEntry is one path ExportTree copied, with its owner and mode as the
// guest left them (the host copy is always an owner-writable file or
// directory).
type TreeEntry struct {
	Path   string `json:"path"` // relative to the exported directory, "/"-separated; "." is the directory itself
	Type   string `json:"type"` // "dir", "file" or "symlink"
	Mode   uint32 `json:"mode"` // Unix permission bits with setuid, setgid and sticky (07777)
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	Size   int64  `json:"size,omitempty"`   // files
	Target string `json:"target,omitempty"` // symlinks
}

// ExportTree stops the emulated CPU and copies the directory guestDir of the
// 9p root (an absolute guest path) to hostDir, which must not exist, straight
// from v86's file system in the harness: megabytes in a second, where the
// serial port carries about 100 KB/s. Whatever the guest has not written
// back yet (its page cache) is not there, so the guest syncs first. The
// entries come sorted by path, parents first. The VM cannot run on afterwards.
func (v *VM) ExportTree(ctx context.Context, guestDir, hostDir string) ([]TreeEntry, error) {
	abs, err := filepath.Abs(hostDir)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", guestDir, err)
	}
	msg, err := v.h.call(ctx, "export_tree", map[string]any{"path": guestDir, "out": abs, "stop_cpu": true})
	if err != nil {
		return nil, err
	}
	var entries []TreeEntry
	if err := json.Unmarshal(msg["entries"], &entries); err != nil {
		return nil, fmt.Errorf("export %s: %w", guestDir, err)
	}
	return entries, nil
}

// ConsoleTail returns the last lines the guest printed on ttyS0.
func (v *VM) ConsoleTail() string { return v.h.consoleTail() }
