package web

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
	want := []string{"pgwasm.js", "pgwasm.js.LEGAL.txt", "types/pgwasm.d.ts", "v86.LICENSE.txt", "v86.wasm", "xterm.css"}
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
