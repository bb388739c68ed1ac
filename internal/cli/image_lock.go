package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pgwasm/pgwasm/internal/image"
)

func newImageLockCommand(e *env) *ffcli.Command {
	c := image.DefaultConfig()
	fs := newFlagSet("lock", e)
	out := fs.String("file", image.LockPath, "lock file to write (the build embeds "+image.LockPath+")")
	fs.StringVar(&c.CacheDir, "cache", c.CacheDir, "downloads and build results, kept between builds and checkouts (env PGWASM_CACHE)")
	fs.StringVar(&c.Mirror, "mirror", "", "Debian archive URI (default: read from the host's apt sources)")
	return &ffcli.Command{
		Name:       "lock",
		ShortUsage: "pgwasm image lock [--file " + image.LockPath + "]",
		ShortHelp:  "lock the image's Debian packages at the versions the archive offers today (review the diff, rebuild)",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unexpected arguments: %s", strings.Join(args, " "))
			}
			c.Logger = e.logger
			c.Lock = nil
			lock, err := image.Lock(ctx, c)
			if err != nil {
				return err
			}
			tmp := *out + ".tmp"
			if err := os.WriteFile(tmp, lock.Format(), 0o644); err != nil {
				return fmt.Errorf("cannot write the lock file: %w", err)
			}
			if err := os.Rename(tmp, *out); err != nil {
				return fmt.Errorf("cannot write the lock file: %w", err)
			}
			fmt.Fprintf(e.stdout, "locked %d packages in %s\n", len(lock.Packages()), filepath.Clean(*out))
			return nil
		},
	}
}
