package web

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// PackageOptions says where the npm package's parts are (make package;
// docs/web.md, "Use it from your app").
type PackageOptions struct {
	// WebDir is BuildOptions.WebDir: the package's module is the app
	// build's pgwasm.js.
	WebDir string
	// PackageDir holds the package's package.json; its dist/ is replaced.
	PackageDir string
	// TypesDir holds the declarations tsc emitted for src/pgwasm.ts
	// (tsc -p web/package).
	TypesDir string
}

// packaged are the files of the app build the package ships under their
// own names: the module, the licenses of what it bundles, and the three
// files it loads from its own directory (each a literal
// new URL("./name", import.meta.url), which webpack and Vite emit into an
// app's bundle):
// the emulator's worker (which bundles v86), v86's WebAssembly and xterm's
// style sheet. So the package's dist/ works from any static host, with no
// route of pgwasm serve.
var packaged = []string{"pgwasm.js", "pgwasm.js.LEGAL.txt", "vm-worker.js", "v86.wasm", "xterm.css"}

// v86 has no license comment for esbuild to gather into LEGAL.txt, and its
// BSD license asks that binary copies carry it.
const v86License = "node_modules/v86/LICENSE"

// BuildPackage writes the npm package's dist/: the same bundle Build makes
// for /pgwasm.js (one esbuild configuration for both) and the declarations
// in types/.
func BuildPackage(opts PackageOptions) (*BuildResult, error) {
	if opts.WebDir == "" || opts.PackageDir == "" || opts.TypesDir == "" {
		return nil, errors.New("package build needs WebDir, PackageDir and TypesDir")
	}
	if _, err := os.Stat(filepath.Join(opts.TypesDir, "pgwasm.d.ts")); err != nil {
		return nil, fmt.Errorf("declarations missing (run tsc -p web/package): %w", err)
	}
	tmp, err := os.MkdirTemp(opts.PackageDir, ".pkgbuild-*")
	if err != nil {
		return nil, fmt.Errorf("cannot create build directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	app := filepath.Join(tmp, "app")
	if _, err := Build(BuildOptions{WebDir: opts.WebDir, OutDir: app, Minify: true}); err != nil {
		return nil, err
	}
	dist := filepath.Join(tmp, "dist")
	for _, name := range packaged {
		if err := copyFile(filepath.Join(app, name), filepath.Join(dist, name)); err != nil {
			return nil, fmt.Errorf("cannot copy %s: %w", name, err)
		}
	}
	if err := copyFile(filepath.Join(opts.WebDir, v86License), filepath.Join(dist, "v86.LICENSE.txt")); err != nil {
		return nil, fmt.Errorf("cannot copy v86's license: %w", err)
	}
	err = filepath.WalkDir(opts.TypesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".d.ts") {
			return err
		}
		rel, err := filepath.Rel(opts.TypesDir, p)
		if err != nil {
			return err
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		dst := filepath.Join(dist, "types", rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, addJSExtensions(src), 0o644)
	})
	if err != nil {
		return nil, fmt.Errorf("cannot copy declarations: %w", err)
	}
	out := &BuildResult{}
	err = filepath.WalkDir(dist, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dist, p)
		out.Files = append(out.Files, filepath.ToSlash(rel))
		out.Bytes += st.Size()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot list the package: %w", err)
	}
	if err := replaceDir(dist, filepath.Join(opts.PackageDir, "dist")); err != nil {
		return nil, err
	}
	return out, nil
}

// relSpecifier is a relative module specifier in a declaration file:
// import ... from "./x", export ... from "./x", import("./x").
var relSpecifier = regexp.MustCompile(`((?:from|import)\s*\(?\s*)"(\.\.?/[^"]*)"`)

// addJSExtensions gives extensionless relative specifiers a .js: tsc keeps
// them as written in the sources (moduleResolution Bundler), and a
// consumer resolving with NodeNext refuses them in an ES module package
// (TS2834), silently leaving the API untyped. "./agent.js" finds
// agent.d.ts under every resolution mode.
func addJSExtensions(src []byte) []byte {
	return relSpecifier.ReplaceAllFunc(src, func(m []byte) []byte {
		sub := relSpecifier.FindSubmatch(m)
		if path.Ext(string(sub[2])) != "" {
			return m
		}
		return []byte(fmt.Sprintf(`%s"%s.js"`, sub[1], sub[2]))
	})
}
