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
	"strconv"
	"strings"

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
	e := &env{
		stdout: stdout,
		stderr: stderr,
		logger: newLogger(stderr, os.Getenv),
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

// newLogger is the process logger: text on w, or JSON with
// PGWASM_LOG_FORMAT=json; debug lines with PGWASM_DEBUG set to a true
// value. PGWASM_DEBUG is a boolean, so 0, false, off or empty keep debug
// off (any non-empty value used to turn it on, PGWASM_DEBUG=0 included);
// a value that is no boolean keeps it off and says so.
func newLogger(w io.Writer, getenv func(string) string) *slog.Logger {
	level := slog.LevelInfo
	debug, err := parseBoolEnv(getenv("PGWASM_DEBUG"))
	if debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	if getenv("PGWASM_LOG_FORMAT") == "json" {
		log = slog.New(slog.NewJSONHandler(w, opts))
	} else {
		log = slog.New(slog.NewTextHandler(w, opts))
	}
	if err != nil {
		log.Warn("PGWASM_DEBUG ignored: debug logging stays off", "err", err)
	}
	return log
}

// parseBoolEnv reads a boolean environment value: strconv.ParseBool's
// forms (1, t, true, 0, f, false, any case) plus yes/no and on/off; empty
// is false.
func parseBoolEnv(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "no", "off":
		return false, nil
	case "yes", "on":
		return true, nil
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("cannot parse %q as a boolean (want 1/0, true/false, yes/no, on/off)", v)
	}
	return b, nil
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
		ShortUsage: "pgwasm image <build|snapshot|lock|container> [flags]",
		ShortHelp:  "build the VM image and its snapshots",
		FlagSet:    newFlagSet("image", e),
		Subcommands: []*ffcli.Command{
			newImageBuildCommand(e),
			newImageSnapshotCommand(e),
			newImageLockCommand(e),
			newImageContainerCommand(e),
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
