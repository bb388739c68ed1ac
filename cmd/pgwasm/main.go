// Command pgwasm builds the PostgreSQL VM image, runs it headless, and serves
// the browser app together with its network relay and inbound tunnel.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pgwasm/pgwasm/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
