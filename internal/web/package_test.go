package web

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/evanw/esbuild/pkg/api"
)

func TestAddJSExtensions(t *testing.T) {
	tests := []struct{ in, want string }{
		{`import { Agent, type QueryResult } from "./agent";`, `import { Agent, type QueryResult } from "./agent.js";`},
		{`export { StateError } from "./statefile";`, `export { StateError } from "./statefile.js";`},
		{`export * from "../src/x";`, `export * from "../src/x.js";`},
		{`let a: import("./agent").Agent;`, `let a: import("./agent.js").Agent;`},
		{`import "./side";`, `import "./side.js";`},
		{`import { X } from "./x.js";`, `import { X } from "./x.js";`},
		{`import { Terminal } from "@xterm/xterm";`, `import { Terminal } from "@xterm/xterm";`},
		{`message: "./not/an/import";`, `message: "./not/an/import";`},
	}
	for _, tt := range tests {
		if got := string(addJSExtensions([]byte(tt.in))); got != tt.want {
			t.Errorf("addJSExtensions(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestBuildPackage writes the npm package's dist/ from the real web/
// sources (when npm has fetched the libraries) and stand-in declarations.
func TestBuildPackage(t *testing.T) {
	types := t.TempDir()
	if err := os.WriteFile(filepath.Join(types, "pgwasm.d.ts"), []byte(`export { Agent } from "./agent";`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pkg := t.TempDir()
	res, err := BuildPackage(PackageOptions{WebDir: "../../web", PackageDir: pkg, TypesDir: types})
	if err != nil {
		if strings.Contains(err.Error(), "web libraries missing") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	want := []string{"pgwasm.js", "pgwasm.js.LEGAL.txt", "types/pgwasm.d.ts", "v86.LICENSE.txt", "v86.wasm", "vm-worker.js", "xterm.css"}
	got := slices.Sorted(slices.Values(res.Files))
	if !slices.Equal(got, want) {
		t.Errorf("package files = %q, want %q", got, want)
	}
	d, err := os.ReadFile(filepath.Join(pkg, "dist", "types", "pgwasm.d.ts"))
	if err != nil || !strings.Contains(string(d), `"./agent.js"`) {
		t.Errorf("declarations not copied with .js specifiers: %q, %v", d, err)
	}
	entries, _ := os.ReadDir(pkg)
	if len(entries) != 1 || entries[0].Name() != "dist" {
		t.Errorf("package dir holds %v, want only dist (no build leftovers)", entries)
	}
	if _, err := BuildPackage(PackageOptions{WebDir: "../../web", PackageDir: pkg, TypesDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "declarations missing") {
		t.Errorf("build without declarations: err = %v, want declarations missing", err)
	}
}

// TestPackageBundles bundles a consumer of the package for the browser with
// esbuild, as an app's build would: v86's Node-only dynamic imports
// (node:crypto, node:fs/promises) must be mapped away by the package.json's
// "browser" field, or the consumer's build fails to resolve them.
func TestPackageBundles(t *testing.T) {
	app := t.TempDir()
	pkg := filepath.Join(app, "node_modules", "pgwasm")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	manifest, err := os.ReadFile("../../web/package/package.json")
	if err != nil {
		t.Fatal(err)
	}
	types := t.TempDir()
	for name, data := range map[string]string{
		filepath.Join(pkg, "package.json"):  string(manifest),
		filepath.Join(types, "pgwasm.d.ts"): "export {};\n",
		filepath.Join(app, "main.js"):       `import { boot } from "pgwasm"; boot({ imageBase: "/image/" });` + "\n",
		filepath.Join(app, "package.json"):  `{"type": "module"}` + "\n",
	} {
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := BuildPackage(PackageOptions{WebDir: "../../web", PackageDir: pkg, TypesDir: types}); err != nil {
		if strings.Contains(err.Error(), "web libraries missing") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	res := api.Build(api.BuildOptions{
		AbsWorkingDir: app,
		EntryPoints:   []string{"main.js"},
		Bundle:        true,
		Format:        api.FormatESModule,
		Platform:      api.PlatformBrowser,
		Outdir:        filepath.Join(app, "out"),
		LogLevel:      api.LogLevelSilent,
	})
	for _, msg := range api.FormatMessages(res.Errors, api.FormatMessagesOptions{Kind: api.ErrorMessage}) {
		t.Error(msg)
	}
}
