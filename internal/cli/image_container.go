package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pgwasm/pgwasm/internal/container"
)

func newImageContainerCommand(e *env) *ffcli.Command {
	fs := newFlagSet("container", e)
	var opts container.Options
	fs.StringVar(&opts.Binary, "binary", "", "static Linux pgwasm binary for the image (CGO_ENABLED=0; make container builds it)")
	fs.StringVar(&opts.VMImage, "image", "build/image", "VM image directory to bake in at "+container.ImageDir+" (with its snapshot)")
	out := fs.String("out", "build/container", "OCI image layout directory to write (an earlier layout there is replaced)")
	ref := fs.String("ref", "pgwasm:latest", "name recorded in the layout's index (org.opencontainers.image.ref.name)")
	return &ffcli.Command{
		Name:       "container",
		ShortUsage: "pgwasm image container --binary FILE [--image build/image] [--out build/container]",
		ShortHelp:  "write the OCI image layout of pgwasm serve (static binary and VM image; reproducible, no container engine)",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unexpected arguments: %s", strings.Join(args, " "))
			}
			if opts.Binary == "" {
				return errors.New("--binary is required: a static pgwasm (CGO_ENABLED=0 go build ./cmd/pgwasm)")
			}
			img, err := container.Build(opts)
			if err != nil {
				return err
			}
			digest, err := container.WriteLayout(*out, *ref, img)
			if err != nil {
				return err
			}
			e.logger.Info("container image written", "layout", *out, "ref", *ref, "digest", digest.String())
			fmt.Fprintf(e.stdout, "%s %s\n", digest, *out)
			return nil
		},
	}
}
