// Package cli holds the pgwasm command tree: one file per subcommand, each with
// its own config struct that registers its flags (also settable as PGWASM_*
// environment variables).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"
)

// env is the context every subcommand receives: where to write and how to log.
type env struct {
	stdout io.Writer
	stderr io.Writer
	logger *slog.Logger
}

// Run parses args, runs the chosen subcommand and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	level := new(slog.LevelVar)
	e := &env{
		stdout: stdout,
		stderr: stderr,
		logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	}
	if os.Getenv("PGWASM_LOG_FORMAT") == "json" {
		e.logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	}
	if os.Getenv("PGWASM_DEBUG") != "" {
		level.Set(slog.LevelDebug)
	}

	rootFlags := flag.NewFlagSet("pgwasm", flag.ContinueOnError)
	rootFlags.SetOutput(stderr)
	root := &ffcli.Command{
		Name:       "pgwasm",
		ShortUsage: "pgwasm <subcommand> [flags]",
		ShortHelp:  "PostgreSQL in a browser VM: image builder, headless runner and server",
		FlagSet:    rootFlags,
		Subcommands: []*ffcli.Command{
			newServeCommand(e),
			newImageCommand(e),
			newVMCommand(e),
		},
		Exec: func(context.Context, []string) error { return flag.ErrHelp },
	}
	if err := root.ParseAndRun(ctx, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 2
		}
		var exit exitError
		if errors.As(err, &exit) {
			if exit.err != nil {
				fmt.Fprintf(stderr, "pgwasm: %v\n", exit.err)
			}
			return exit.code
		}
		fmt.Fprintf(stderr, "pgwasm: %v\n", err)
		return 1
	}
	return 0
}

// exitError lets a subcommand choose its exit code (vm run exits 3 on an SQL
// error so scripts can tell it from a broken VM).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return fmt.Sprintf("exit %d: %v", e.code, e.err) }

// newFlagSet makes a flag set whose flags may also come from PGWASM_* variables.
func newFlagSet(name string, e *env) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

// envOptions are the ff options every leaf command parses with.
func envOptions() []ff.Option { return []ff.Option{ff.WithEnvVarPrefix("PGWASM")} }

func newImageCommand(e *env) *ffcli.Command {
	return &ffcli.Command{
		Name:       "image",
		ShortUsage: "pgwasm image <build|snapshot> [flags]",
		ShortHelp:  "build the VM image and its snapshots",
		FlagSet:    newFlagSet("image", e),
		Subcommands: []*ffcli.Command{
			newImageBuildCommand(e),
			newImageSnapshotCommand(e),
		},
		Exec: func(context.Context, []string) error { return flag.ErrHelp },
	}
}

func newVMCommand(e *env) *ffcli.Command {
	return &ffcli.Command{
		Name:        "vm",
		ShortUsage:  "pgwasm vm run [flags]",
		ShortHelp:   "run the VM headless",
		FlagSet:     newFlagSet("vm", e),
		Subcommands: []*ffcli.Command{newVMRunCommand(e)},
		Exec:        func(context.Context, []string) error { return flag.ErrHelp },
	}
}
