package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pgwasm/pgwasm/internal/image"
)

type imageBuildConfig struct {
	image.Config
	extra string
	json  bool
}

func (c *imageBuildConfig) registerFlags(e *env) *flag.FlagSet {
	fs := newFlagSet("build", e)
	c.Config = image.DefaultConfig()
	fs.StringVar(&c.Out, "out", c.Out, "output directory")
	fs.StringVar(&c.CacheDir, "cache", c.CacheDir, "downloads and build results, kept between builds and checkouts (env PGWASM_CACHE)")
	fs.StringVar(&c.AgentPath, "agent", "build/bin/pgwasm-agent", "the guest agent binary (linux/386)")
	fs.StringVar(&c.extra, "extra-packages", "", "comma-separated Debian packages to add, with their dependencies")
	fs.StringVar(&c.Mirror, "mirror", "", "Debian archive URI (default: read from the host's apt sources)")
	fs.StringVar(&c.Kernel, "kernel", c.Kernel, "the kernel: debian (Debian's linux-image-686 with modules) or source (built from linux-source-6.1 with guest/kernel/pgwasm.config)")
	fs.StringVar(&c.Cmdline, "cmdline", "", "kernel command line (default: the chosen kernel's, docs/image.md)")
	fs.StringVar(&c.NetDevice, "net-device", c.NetDevice, "v86 NIC the image is made for: virtio or ne2k")
	fs.StringVar(&c.HarnessDir, "harness", "", "directory of the Node harness (vm.mjs) that boots the VM to run initdb; found automatically when empty")
	fs.BoolVar(&c.Force, "force", false, "rebuild even when the inputs are unchanged")
	fs.BoolVar(&c.json, "json", false, "print the manifest as JSON")
	return fs
}

func newImageBuildCommand(e *env) *ffcli.Command {
	var c imageBuildConfig
	fs := c.registerFlags(e)
	return &ffcli.Command{
		Name:       "build",
		ShortUsage: "pgwasm image build [--out build/image] [--kernel debian|source] [--extra-packages a,b]",
		ShortHelp:  "build the VM image from Debian i386 packages (a cache hit when inputs are unchanged)",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unexpected arguments: %s", strings.Join(args, " "))
			}
			if c.Kernel != image.KernelDebian && c.Kernel != image.KernelSource {
				return fmt.Errorf("--kernel must be %s or %s, not %q", image.KernelDebian, image.KernelSource, c.Kernel)
			}
			if c.NetDevice != "ne2k" && c.NetDevice != "virtio" {
				return fmt.Errorf("--net-device must be ne2k or virtio, not %q", c.NetDevice)
			}
			for _, p := range strings.Split(c.extra, ",") {
				if p = strings.TrimSpace(p); p != "" {
					c.ExtraPackages = append(c.ExtraPackages, p)
				}
			}
			c.Logger = e.logger
			res, err := image.Build(ctx, c.Config)
			if err != nil {
				return err
			}
			if c.json {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(res.Manifest)
			}
			m := res.Manifest
			state := "built"
			if res.CacheHit {
				state = "up to date"
			}
			fmt.Fprintf(e.stdout, "image %s in %s: PostgreSQL %s, %d packages, kernel %s, 9p tree %d files (%.1f MB, %.1f MB as blobs)\n",
				state, c.Out, m.PostgresVersion, len(m.Packages), m.KernelPackage.Version, m.FS.Files, float64(m.FS.Bytes)/1e6, float64(m.FS.BlobBytes)/1e6)
			return nil
		},
	}
}
