package cli

import (
	"context"
	"errors"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// TODO(owner of this file): replace with the real command.
func newImageBuildCommand(e *env) *ffcli.Command {
	return &ffcli.Command{
		Name:      "build",
		FlagSet:   newFlagSet("build", e),
		Options:   envOptions(),
		ShortHelp: "not implemented yet",
		Exec:      func(context.Context, []string) error { return errors.New("build: not implemented yet") },
	}
}
