// Command webbuild bundles the browser app (web/) into internal/web/dist,
// which the pgwasm binary embeds. It runs esbuild through its Go API, so no
// Node is needed (npm ci only fetched the library sources).
//
//	go run ./internal/web/cmd/webbuild [-web web] [-out internal/web/dist]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/pgwasm/pgwasm/internal/web"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("webbuild", flag.ContinueOnError)
	webDir := fs.String("web", "web", "directory with src/, static/ and node_modules/")
	out := fs.String("out", "internal/web/dist", "output directory (embedded by internal/web)")
	minify := fs.Bool("minify", true, "minify the bundles")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	t := time.Now()
	res, err := web.Build(web.BuildOptions{WebDir: *webDir, OutDir: *out, Minify: *minify})
	if err != nil {
		fmt.Fprintln(os.Stderr, "webbuild:", err)
		return 1
	}
	log.Info("web app built", "out", *out, "files", len(res.Files), "bytes", res.Bytes, "ms", time.Since(t).Milliseconds())
	return 0
}
