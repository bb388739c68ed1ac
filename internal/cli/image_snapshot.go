package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// imageSnapshotConfig holds the flags of `pgwasm image snapshot`.
type imageSnapshotConfig struct {
	image   string
	memory  string
	force   bool
	harness string
	node    string
}

func (c *imageSnapshotConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.image, "image", "build/image", "image directory (from pgwasm image build)")
	fs.StringVar(&c.memory, "memory", strconv.Itoa(manifest.DefaultMemoryMB), "memory sizes in MB, comma-separated (e.g. "+memorySizes()+")")
	fs.BoolVar(&c.force, "force", false, "snapshot even when the existing one is current")
	fs.StringVar(&c.harness, "harness", "", "directory of the Node harness (vm.mjs); found automatically when empty")
	fs.StringVar(&c.node, "node", "node", "Node.js executable")
}

// sizes parses the --memory list.
func (c *imageSnapshotConfig) sizes() ([]int, error) {
	var out []int
	for _, f := range strings.Split(c.memory, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err == nil {
			err = manifest.CheckMemory(n)
		}
		if err != nil {
			return nil, fmt.Errorf("--memory %q: want powers of two from %d to %d MB", f, manifest.MinMemoryMB, manifest.MaxMemoryMB)
		}
		out = append(out, n)
	}
	return out, nil
}

func newImageSnapshotCommand(e *env) *ffcli.Command {
	var cfg imageSnapshotConfig
	fs := newFlagSet("snapshot", e)
	cfg.RegisterFlags(fs)
	return &ffcli.Command{
		Name:       "snapshot",
		ShortUsage: "pgwasm image snapshot [--image DIR] [--memory 128,256] [--force]",
		ShortHelp:  "boot the image headless and save state-<MB>.bin.zst for each memory size",
		LongHelp: "Boots the image from scratch in v86 under Node, waits until PostgreSQL is ready,\n" +
			"prepares the guest (checkpoint, drop caches) and saves the VM state, compressed\n" +
			"with zstd -19, with its metadata in state-<MB>.json. A snapshot that matches\n" +
			"the image key, memory size and v86 version is kept unless --force.\n" +
			"Prints one JSON line per memory size.",
		FlagSet: fs,
		Options: envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("snapshot: unexpected arguments %q", args)
			}
			sizes, err := cfg.sizes()
			if err != nil {
				return err
			}
			for _, mb := range sizes {
				res, err := vm.Snapshot(ctx, vm.SnapshotOptions{
					ImageDir:   cfg.image,
					Memory:     mb,
					Force:      cfg.force,
					HarnessDir: cfg.harness,
					Node:       cfg.node,
					Logger:     e.logger.With("memory_mb", mb),
				})
				if err != nil {
					return err
				}
				line, err := json.Marshal(res)
				if err != nil {
					return fmt.Errorf("snapshot report: %w", err)
				}
				fmt.Fprintln(e.stdout, string(line))
			}
			return nil
		},
	}
}

// memorySizes lists the sizes the product offers, for the flag's help.
func memorySizes() string {
	var s []string
	for _, mb := range manifest.MemorySizes() {
		s = append(s, strconv.Itoa(mb))
	}
	return strings.Join(s, ",")
}
