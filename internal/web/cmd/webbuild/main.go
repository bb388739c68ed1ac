// Command webbuild bundles the browser app (web/) into internal/web/dist,
// which the pgwasm binary embeds. It runs esbuild through its Go API, so no
// Node is needed (npm ci only fetched the library sources).
//
//	go run ./internal/web/cmd/webbuild [-web web] [-out internal/web/dist]
//
// With -package it writes the npm package's dist/ instead (make package):
// the same pgwasm.js bundle, v86.wasm, xterm.css and the declarations tsc
// emitted into -types.
//
//	go run ./internal/web/cmd/webbuild -package web/package -types build/package-types
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
	pkg := fs.String("package", "", "write the npm package's dist/ into this directory (holding its package.json) instead of the app")
	types := fs.String("types", "build/package-types", "with -package: the declarations tsc emitted (tsc -p web/package)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	t := time.Now()
	if *pkg != "" {
		res, err := web.BuildPackage(web.PackageOptions{WebDir: *webDir, PackageDir: *pkg, TypesDir: *types})
		if err != nil {
			fmt.Fprintln(os.Stderr, "webbuild:", err)
			return 1
		}
		log.Info("npm package built", "dir", *pkg, "files", len(res.Files), "bytes", res.Bytes, "ms", time.Since(t).Milliseconds())
		return 0
	}
	res, err := web.Build(web.BuildOptions{WebDir: *webDir, OutDir: *out, Minify: *minify})
	if err != nil {
		fmt.Fprintln(os.Stderr, "webbuild:", err)
		return 1
	}
	log.Info("web app built", "out", *out, "files", len(res.Files), "bytes", res.Bytes, "ms", time.Since(t).Milliseconds())
	return 0
}
