package web

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/evanw/esbuild/pkg/api"
)

// BuildOptions says where the web sources are and where the assets go.
type BuildOptions struct {
	// WebDir holds src/, static/ and node_modules/ (npm ci fetched the
	// libraries; Node itself is not run).
	WebDir string
	// OutDir receives the assets; it is emptied first.
	OutDir string
	// Minify the bundles (the default for the embedded build).
	Minify bool
}

// BuildResult lists what was written.
type BuildResult struct {
	Files []string // relative to OutDir
	Bytes int64
}

// Entry points: the page, the embedding API and the emulator's worker (v86
// runs in it; both the page and the API start it from their own URL). Each
// is one file (no code splitting): the worker finds v86.wasm and the page
// or the API the image relative to their own URL, and a page loads only
// one of the first two.
var entryPoints = []api.EntryPoint{
	{InputPath: "src/app.ts", OutputPath: "app"},
	{InputPath: "src/pgwasm.ts", OutputPath: "pgwasm"},
	{InputPath: "src/vm-worker.ts", OutputPath: "vm-worker"},
}

// copied are library files served as they are.
var copied = map[string]string{
	"node_modules/v86/build/v86.wasm":         "v86.wasm",
	"node_modules/@xterm/xterm/css/xterm.css": "xterm.css",
}

// Build bundles the TypeScript sources with esbuild's Go API, copies the
// static files and v86's WebAssembly module, and writes a .gz twin of each
// compressible file so the handler can send it without compressing per
// request.
func Build(opts BuildOptions) (*BuildResult, error) {
	if opts.WebDir == "" || opts.OutDir == "" {
		return nil, errors.New("web build needs WebDir and OutDir")
	}
	if _, err := os.Stat(filepath.Join(opts.WebDir, "node_modules", "v86", "build", "libv86.mjs")); err != nil {
		return nil, fmt.Errorf("web libraries missing (run npm ci in %s): %w", opts.WebDir, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(opts.OutDir)), ".webbuild-*")
	if err != nil {
		return nil, fmt.Errorf("cannot create build directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	res := api.Build(api.BuildOptions{
		AbsWorkingDir:       mustAbs(opts.WebDir),
		EntryPointsAdvanced: entryPoints,
		Bundle:              true,
		Format:              api.FormatESModule,
		Platform:            api.PlatformBrowser,
		Target:              api.ES2022,
		Outdir:              mustAbs(tmp),
		ChunkNames:          "chunks/[name]-[hash]",
		AssetNames:          "assets/[name]-[hash]",
		Sourcemap:           api.SourceMapNone,
		MinifyWhitespace:    opts.Minify,
		MinifySyntax:        opts.Minify,
		MinifyIdentifiers:   opts.Minify,
		LegalComments:       api.LegalCommentsLinked,
		// v86 mentions Node modules behind runtime checks; a browser never
		// takes those paths.
		External: []string{"fs", "path", "crypto", "url", "ws", "perf_hooks", "node:*"},
		Loader:   map[string]api.Loader{".css": api.LoaderCSS},
		Write:    true,
		LogLevel: api.LogLevelWarning,
	})
	if len(res.Errors) > 0 {
		msgs := api.FormatMessages(res.Errors, api.FormatMessagesOptions{Kind: api.ErrorMessage})
		return nil, fmt.Errorf("esbuild: %s", strings.Join(msgs, "\n"))
	}
	static := filepath.Join(opts.WebDir, "static")
	err = filepath.WalkDir(static, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(static, p)
		if err != nil {
			return err
		}
		return copyFile(p, filepath.Join(tmp, rel))
	})
	if err != nil {
		return nil, fmt.Errorf("cannot copy static files: %w", err)
	}
	for src, dst := range copied {
		if err := copyFile(filepath.Join(opts.WebDir, src), filepath.Join(tmp, dst)); err != nil {
			return nil, fmt.Errorf("cannot copy %s: %w", src, err)
		}
	}
	out := &BuildResult{}
	err = filepath.WalkDir(tmp, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(tmp, p)
		st, err := d.Info()
		if err != nil {
			return err
		}
		out.Files = append(out.Files, filepath.ToSlash(rel))
		out.Bytes += st.Size()
		if compressible(rel) {
			return writeGzip(p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot compress assets: %w", err)
	}
	// Swap the new tree in, keeping OutDir's .gitignore.
	if err := replaceDir(tmp, opts.OutDir); err != nil {
		return nil, err
	}
	return out, nil
}

func compressible(name string) bool {
	switch filepath.Ext(name) {
	case ".js", ".css", ".html", ".wasm", ".map", ".json", ".txt", ".svg":
		return true
	}
	return false
}

func writeGzip(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if buf.Len() >= len(data)*9/10 {
		return nil // not worth it
	}
	return os.WriteFile(path+".gz", buf.Bytes(), 0o644)
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

func replaceDir(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", to, err)
	}
	entries, err := os.ReadDir(to)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", to, err)
	}
	for _, e := range entries {
		if e.Name() == ".gitignore" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(to, e.Name())); err != nil {
			return fmt.Errorf("cannot clear %s: %w", to, err)
		}
	}
	entries, err = os.ReadDir(from)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", from, err)
	}
	for _, e := range entries {
		if err := os.Rename(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			return fmt.Errorf("cannot move %s into %s: %w", e.Name(), to, err)
		}
	}
	return nil
}

func mustAbs(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
