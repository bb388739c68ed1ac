package cli

import (
	"context"
	"errors"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// TODO(owner of this file): replace with the real command.
func newServeCommand(e *env) *ffcli.Command {
	return &ffcli.Command{
		Name:      "serve",
		FlagSet:   newFlagSet("serve", e),
		Options:   envOptions(),
		ShortHelp: "not implemented yet",
		Exec:      func(context.Context, []string) error { return errors.New("serve: not implemented yet") },
	}
}
