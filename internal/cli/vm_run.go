package cli

import (
	"context"
	"errors"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// TODO(owner of this file): replace with the real command.
func newVMRunCommand(e *env) *ffcli.Command {
	return &ffcli.Command{
		Name:      "run",
		FlagSet:   newFlagSet("run", e),
		Options:   envOptions(),
		ShortHelp: "not implemented yet",
		Exec:      func(context.Context, []string) error { return errors.New("run: not implemented yet") },
	}
}
