package extbuild

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

const showsrcOutput = `Package: pgvector
Binary: postgresql-17-pgvector
Version: 0.8.0-1
Files:
 00397786992e5decf2d9a3241272a9af 2107 pgvector_0.8.0-1.dsc
 a0a009e5d1ac9aa2b9d69241adcce307 122290 pgvector_0.8.0.orig.tar.gz
Checksums-Sha256:
 a71780bf7ab9901094a3d9869c489b6e2bcb858a8c14a5fa52d159933e016308 2107 pgvector_0.8.0-1.dsc
 867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0 122290 pgvector_0.8.0.orig.tar.gz
 6cb10bfdee32a093f0711a53d61f63657514d60058ff76a44ae2a4434f9c7ee5 3788 pgvector_0.8.0-1.debian.tar.xz
Homepage: https://github.com/pgvector/pgvector
Directory: pool/main/p/pgvector

Package: pgvector
Version: 0.7.4-2
Checksums-Sha256:
 1111111111111111111111111111111111111111111111111111111111111111 10 pgvector_0.7.4-2.dsc

`

func TestParseSources(t *testing.T) {
	got := parseSources([]byte(showsrcOutput))
	want := []sourcePkg{
		{Name: "pgvector", Version: "0.8.0-1", Files: []sourceFile{
			{"pgvector_0.8.0-1.dsc", 2107, "a71780bf7ab9901094a3d9869c489b6e2bcb858a8c14a5fa52d159933e016308"},
			{"pgvector_0.8.0.orig.tar.gz", 122290, "867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0"},
			{"pgvector_0.8.0-1.debian.tar.xz", 3788, "6cb10bfdee32a093f0711a53d61f63657514d60058ff76a44ae2a4434f9c7ee5"},
		}},
		{Name: "pgvector", Version: "0.7.4-2", Files: []sourceFile{
			{"pgvector_0.7.4-2.dsc", 10, "1111111111111111111111111111111111111111111111111111111111111111"},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseSources =\n%+v\nwant\n%+v", got, want)
	}
	if dsc, err := got[0].dscName(); err != nil || dsc != "pgvector_0.8.0-1.dsc" {
		t.Fatalf("dscName = %q, %v", dsc, err)
	}
}

func TestLookup(t *testing.T) {
	for _, tc := range []struct {
		pkg    string
		source string
		ok     bool
	}{
		{"postgresql-17-pgvector", "pgvector", true},
		{"pgvector", "pgvector", true},
		{"postgresql-17-postgis-3", "", false},
	} {
		r, ok := Lookup(tc.pkg)
		if ok != tc.ok || r.Source != tc.source {
			t.Errorf("Lookup(%q) = %q, %v; want %q, %v", tc.pkg, r.Source, ok, tc.source, tc.ok)
		}
	}
	r, _ := Lookup("postgresql-17-pgvector")
	if !contains(r.MakeArgs, "OPTFLAGS=") {
		t.Errorf("pgvector recipe MakeArgs = %q: must clear OPTFLAGS (-march=native)", r.MakeArgs)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestResultKey: every input changes the key; the same inputs give the
// same key.
func TestResultKey(t *testing.T) {
	r, _ := Lookup("pgvector")
	sp := &sourcePkg{Name: "pgvector", Version: "0.8.0-1", Files: []sourceFile{{"a.dsc", 1, "aa"}}}
	tool := []deb.Package{{Package: manifest.Package{Name: "libc6-dev", Version: "2.41-12", Arch: "i386", SHA256: "bb"}}}
	cc := &CrossCompiler{CC: "/usr/bin/i686-linux-gnu-gcc", Version: "12.2.0", Target: "i686-linux-gnu",
		Ident: "i686-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0", Packages: []string{"gcc-i686-linux-gnu 4:12.2.0-3"}}
	base := resultKey(r, "trixie", sp, tool, cc)
	if again := resultKey(r, "trixie", sp, tool, cc); again != base {
		t.Fatalf("resultKey is not stable: %s then %s", base, again)
	}
	r2 := r
	r2.MakeArgs = []string{"OPTFLAGS=-msse2"}
	sp2 := *sp
	sp2.Files = []sourceFile{{"a.dsc", 1, "ab"}}
	tool2 := []deb.Package{{Package: manifest.Package{Name: "libc6-dev", Version: "2.41-13", Arch: "i386", SHA256: "bb"}}}
	cc2 := *cc
	cc2.Packages = []string{"gcc-i686-linux-gnu 4:12.2.0-4"}
	cc3 := *cc
	cc3.Version = "12.3.0"
	moved := *cc
	moved.CC = "/opt/cross/bin/i686-linux-gnu-gcc"
	if k := resultKey(r, "trixie", sp, tool, &moved); k != base {
		t.Error("the compiler's path changes the key; only what it is should")
	}
	for name, k := range map[string]string{
		"make args":        resultKey(r2, "trixie", sp, tool, cc),
		"suite":            resultKey(r, "forky", sp, tool, cc),
		"source":           resultKey(r, "trixie", &sp2, tool, cc),
		"sysroot":          resultKey(r, "trixie", sp, tool2, cc),
		"compiler package": resultKey(r, "trixie", sp, tool, &cc2),
		"compiler version": resultKey(r, "trixie", sp, tool, &cc3),
	} {
		if k == base {
			t.Errorf("changing the %s does not change the key", name)
		}
	}
}

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestInstallAndReadResult(t *testing.T) {
	out := t.TempDir()
	tree := map[string]string{
		"usr/lib/postgresql/17/lib/vector.so":                        "ELF",
		"usr/share/postgresql/17/extension/vector.control":           "default_version = '0.8.0'\n",
		"usr/share/postgresql/17/extension/vector--0.8.0.sql":        "CREATE TYPE vector;\n",
		"usr/share/postgresql/17/extension/vector--0.7.4--0.8.0.sql": "--\n",
	}
	writeTree(t, filepath.Join(out, "root"), tree)
	files, err := listFiles(filepath.Join(out, "root"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(tree) || files[0].Path != "usr/lib/postgresql/17/lib/vector.so" || files[0].Size != 3 {
		t.Fatalf("listFiles = %+v", files)
	}
	res := &Result{Dir: filepath.Join(out, "root"), Source: "pgvector", Version: "0.8.0-1", Key: "k", Files: files}

	root := t.TempDir()
	// An older file of the same name is replaced.
	writeTree(t, root, map[string]string{"usr/share/postgresql/17/extension/vector.control": "old"})
	if err := Install(res, root); err != nil {
		t.Fatal(err)
	}
	for p, c := range tree {
		got, err := os.ReadFile(filepath.Join(root, p))
		if err != nil || string(got) != c {
			t.Errorf("after Install, %s = %q, %v; want %q", p, got, err, c)
		}
	}

	bad := *res
	bad.Files = append([]File{{Path: "../escape"}}, res.Files...)
	if err := Install(&bad, root); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("Install(../escape) = %v, want a refusal", err)
	}

	// A cached result whose file changed is not taken.
	if err := writeResultJSON(out, res); err != nil {
		t.Fatal(err)
	}
	if _, err := readResult(out); err != nil {
		t.Fatalf("readResult of an intact result: %v", err)
	}
	if err := os.WriteFile(filepath.Join(out, "root/usr/lib/postgresql/17/lib/vector.so"), []byte("ELG"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readResult(out); err == nil {
		t.Fatal("readResult accepted a result whose vector.so changed")
	}
}

// A Local tree stands in for a source package: its files sorted with their
// checksums, a version from their hash that any edit changes, and a copy
// for make that holds the same files.
func TestLocalSource(t *testing.T) {
	tree := fstest.MapFS{
		"pgwasm.c":    {Data: []byte("int x;\n")},
		"Makefile":    {Data: []byte("MODULES = pgwasm\n")},
		"sub/extra.h": {Data: []byte("#define Y 1\n")},
	}
	r := ModuleRecipe(tree)
	sp, err := localSource(r)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range sp.Files {
		names = append(names, f.Name)
	}
	if want := []string{"Makefile", "pgwasm.c", "sub/extra.h"}; !reflect.DeepEqual(names, want) || sp.Name != "pgwasm" {
		t.Fatalf("localSource = %s %v, want pgwasm %v", sp.Name, names, want)
	}
	if !strings.HasPrefix(sp.Version, "src-") || len(sp.Version) != 16 {
		t.Fatalf("version %q", sp.Version)
	}
	tree["pgwasm.c"] = &fstest.MapFile{Data: []byte("int y;\n")}
	edited, err := localSource(ModuleRecipe(tree))
	if err != nil {
		t.Fatal(err)
	}
	if edited.Version == sp.Version || edited.Files[1].SHA256 == sp.Files[1].SHA256 {
		t.Fatalf("an edited file kept version %s", sp.Version)
	}
	dest := filepath.Join(t.TempDir(), "src")
	if err := copyLocal(tree, dest); err != nil {
		t.Fatal(err)
	}
	for name, f := range tree {
		got, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || string(got) != string(f.Data) {
			t.Errorf("copy of %s = %q, %v; want %q", name, got, err, f.Data)
		}
	}
	if _, err := localSource(ModuleRecipe(fstest.MapFS{})); err == nil {
		t.Error("an empty tree: no error")
	}
}
