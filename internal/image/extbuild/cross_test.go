package extbuild

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/image/deb"
)

// testMakefileGlobal is the part of Debian's Makefile.global the shim and
// the build read.
const testMakefileGlobal = `# PostgreSQL version number
VERSION = 17.12
MAJORVERSION = 17
CPPFLAGS = -Wdate-time -D_FORTIFY_SOURCE=2 -D_GNU_SOURCE  -I/usr/include/libxml2
CC = gcc
CFLAGS = -Wall -O2 -fwrapv
CFLAGS_SL = -fPIC
LIBS = -lz -lm
LDFLAGS = $(LDFLAGS_INTERNAL) -Wl,-z,relro -Wl,-z,now  -Wl,--as-needed
LDFLAGS_EX = 
LDFLAGS_SL += 
`

func fakeSysroot(t *testing.T) string {
	t.Helper()
	sys := filepath.Join(t.TempDir(), "sysroot")
	writeTree(t, sys, map[string]string{pgPath(pgMakefileGlobal): testMakefileGlobal})
	return sys
}

func TestSysrootFlags(t *testing.T) {
	got := sysrootFlags("-D_GNU_SOURCE  -I/usr/include/libxml2 -I. -Irel -L/usr/lib/llvm-19/lib -L=/x -isystem/opt/inc -lm")
	want := "-D_GNU_SOURCE -I=/usr/include/libxml2 -I. -Irel -L=/usr/lib/llvm-19/lib -L=/x -isystem=/opt/inc -lm"
	if got != want {
		t.Fatalf("sysrootFlags = %q, want %q", got, want)
	}
}

func TestHostPath(t *testing.T) {
	t.Setenv("PATH", "/sys/root/usr/bin:relative::/usr/local/bin:/sys/root:/usr/bin:/sys/rootx/bin")
	got := hostPath("/work/bin", "/sys/root")
	if want := "/work/bin:/usr/local/bin:/usr/bin:/sys/rootx/bin"; got != want {
		t.Fatalf("hostPath = %q, want %q", got, want)
	}
}

// TestPGConfigShim runs the generated pg_config (a host sh script, through
// the exec guard) and checks what PGXS reads from it: build-time paths in
// the sysroot, install paths the image's own.
func TestPGConfigShim(t *testing.T) {
	sys := fakeSysroot(t)
	b, err := newBuilder(&CrossCompiler{CC: "/usr/bin/i686-linux-gnu-gcc"}, sys, "17.12-0+deb13u1", 1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pg_config")
	if err := os.WriteFile(path, []byte(b.shim.script()), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	out, err := runHost(ctx, path, "--pgxs", "--includedir-server", "--pkglibdir", "--sharedir", "--libdir", "--cc", "--cppflags", "--ldflags", "--version")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		sys + "/usr/lib/postgresql/17/lib/pgxs/src/makefiles/pgxs.mk",
		sys + "/usr/include/postgresql/17/server",
		"/usr/lib/postgresql/17/lib",
		"/usr/share/postgresql/17",
		sys + "/usr/lib/i386-linux-gnu",
		"/usr/bin/i686-linux-gnu-gcc --sysroot=" + sys,
		"-Wdate-time -D_FORTIFY_SOURCE=2 -D_GNU_SOURCE -I=/usr/include/libxml2",
		"-L=/usr/lib/i386-linux-gnu -Wl,-z,relro -Wl,-z,now -Wl,--as-needed",
		"PostgreSQL 17.12 (Debian 17.12-0+deb13u1)",
	}
	if got := strings.Split(strings.TrimRight(string(out), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("pg_config answered\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	all, err := runHost(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(all), "\nPGXS = "+sys+"/usr/lib/postgresql/17/lib/pgxs/src/makefiles/pgxs.mk\n") {
		t.Errorf("pg_config without options lacks PGXS:\n%s", all)
	}
	if _, err := runHost(ctx, path, "--bindir", "--no-such-option"); err == nil || !strings.Contains(err.Error(), "unknown option --no-such-option") {
		t.Errorf("pg_config --no-such-option: %v, want an error naming it", err)
	}

	// A sysroot of another PostgreSQL is refused.
	other := filepath.Join(t.TempDir(), "other")
	writeTree(t, other, map[string]string{pgPath(pgMakefileGlobal): strings.Replace(testMakefileGlobal, "MAJORVERSION = 17", "MAJORVERSION = 16", 1)})
	if _, err := newBuilder(&CrossCompiler{}, other, "", 1); err == nil || !strings.Contains(err.Error(), "not 17") {
		t.Errorf("newBuilder with PostgreSQL 16: %v", err)
	}
	if _, err := newBuilder(&CrossCompiler{}, "/tmp/with space", "", 1); err == nil {
		t.Error("newBuilder accepted a sysroot path with a space")
	}
}

// i386ELF is the smallest file debug/elf reads as a 32-bit i386 executable.
func i386ELF() []byte {
	h := make([]byte, 52)
	copy(h, elf.ELFMAG)
	h[elf.EI_CLASS], h[elf.EI_DATA], h[elf.EI_VERSION] = byte(elf.ELFCLASS32), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	binary.LittleEndian.PutUint16(h[16:], uint16(elf.ET_EXEC))
	binary.LittleEndian.PutUint16(h[18:], uint16(elf.EM_386))
	binary.LittleEndian.PutUint32(h[20:], uint32(elf.EV_CURRENT))
	binary.LittleEndian.PutUint16(h[40:], 52) // e_ehsize
	return h
}

// TestMissingCrossCompiler: without the cross compiler, Build says what to
// install before it downloads or writes anything; an i386 "compiler" (the
// image's own gcc, say) is refused, not run.
func TestMissingCrossCompiler(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"missing", nil, "the i686 cross compiler i686-linux-gnu-gcc is missing; install gcc-i686-linux-gnu (make setup does)"},
		{"foreign", map[string][]byte{"i686-linux-gnu-gcc": i386ELF()}, "is not a program for this host; install gcc-i686-linux-gnu"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := t.TempDir()
			for name, b := range tc.files {
				if err := os.WriteFile(filepath.Join(bin, name), b, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("PATH", bin)
			cache := t.TempDir()
			r, _ := Lookup("pgvector")
			_, err := Build(context.Background(), Config{
				Apt:      &deb.Apt{Dir: filepath.Join(cache, "apt"), Arch: "i386", Logger: slog.New(slog.DiscardHandler)},
				CacheDir: cache,
			}, r)
			var missing *MissingCompilerError
			if !errors.As(err, &missing) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build = %v, want a MissingCompilerError saying %q", err, tc.want)
			}
			if tc.name == "foreign" {
				var foreign *hostexec.ForeignError
				if !errors.As(err, &foreign) {
					t.Errorf("an i386 compiler was not refused by the exec guard: %v", err)
				}
			}
			if entries, _ := os.ReadDir(cache); len(entries) > 0 {
				t.Errorf("Build wrote %s into the cache before failing", entries[0].Name())
			}
		})
	}
}

// newLocalBuilder is a builder with the host's cross compiler and a fake
// sysroot: enough for a tiny extension that needs no headers or libc.
func newLocalBuilder(t *testing.T) *builder {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cc, err := findCrossCompiler(ctx)
	if err != nil {
		t.Skipf("no cross compiler: %v", err)
	}
	b, err := newBuilder(cc, fakeSysroot(t), "", 2)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tinyExtension is a source tree shaped like a PGXS extension's install
// (a module, a control file, a header) that builds without PostgreSQL's
// headers, asking the pg_config shim for the same directories PGXS does.
func tinyExtension(t *testing.T, csrc string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	writeTree(t, dir, map[string]string{
		"Makefile": `LIB := $(shell $(PG_CONFIG) --pkglibdir)
EXT := $(shell $(PG_CONFIG) --sharedir)/extension
INC := $(shell $(PG_CONFIG) --includedir-server)/extension/tiny
all: tiny.so
tiny.so: tiny.c
	$(CC) $(CPPFLAGS) $(OPTFLAGS) -g -O2 -fPIC -shared -nostdlib -o $@ tiny.c
install: tiny.so
	mkdir -p '$(DESTDIR)$(LIB)' '$(DESTDIR)$(EXT)' '$(DESTDIR)$(INC)'
	cp tiny.so '$(DESTDIR)$(LIB)/'
	cp tiny.control tiny--1.0.sql '$(DESTDIR)$(EXT)/'
	cp tiny.h '$(DESTDIR)$(INC)/'
`,
		"tiny.c":        csrc,
		"tiny.h":        "int tiny(void);\n",
		"tiny.control":  "default_version = '1.0'\n",
		"tiny--1.0.sql": "SELECT 1;\n",
	})
	return dir
}

// TestBuildTreeLocal compiles a tiny extension from a local source tree
// with the cross compiler: an ELF32 i386, stripped module and its SQL files
// in the image's layout, the header dropped.
func TestBuildTreeLocal(t *testing.T) {
	b := newLocalBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := Recipe{Package: "postgresql-17-tiny", Source: "tiny", MakeArgs: []string{"OPTFLAGS="}}
	work := t.TempDir()
	out := filepath.Join(t.TempDir(), "out", "tiny-0123")
	res := &Result{Package: r.Package, Source: r.Source, Key: "k"}
	src := tinyExtension(t, "int tiny(void) { return 42; }\n")
	if err := b.buildTree(ctx, r, src, work, out, res, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range res.Files {
		paths = append(paths, f.Path)
	}
	want := []string{
		"usr/lib/postgresql/17/lib/tiny.so",
		"usr/share/postgresql/17/extension/tiny--1.0.sql",
		"usr/share/postgresql/17/extension/tiny.control",
	}
	if strings.Join(paths, " ") != strings.Join(want, " ") {
		t.Fatalf("installed %q, want %q", paths, want)
	}
	f, err := elf.Open(filepath.Join(res.Dir, want[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS32 || f.Machine != elf.EM_386 {
		t.Errorf("tiny.so is %v %v, want ELFCLASS32 EM_386", f.Class, f.Machine)
	}
	for _, s := range []string{".symtab", ".debug_info"} {
		if f.Section(s) != nil {
			t.Errorf("tiny.so still has %s: not stripped", s)
		}
	}
	// Nothing but the result: no header, no empty directories from the
	// sysroot's path.
	entries, _ := os.ReadDir(res.Dir)
	if len(entries) != 1 || entries[0].Name() != "usr" {
		t.Errorf("result root holds %v, want only usr", entries)
	}
	buildLog, err := os.ReadFile(filepath.Join(out, "build.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(buildLog), "--sysroot="+b.sysroot) {
		t.Errorf("build.log does not show the compiler with --sysroot:\n%s", buildLog)
	}
	if again, err := readResult(out); err != nil || again.Key != "k" {
		t.Errorf("readResult after buildTree: %v", err)
	}
}

// TestBuildTreeReproducible: the same source built in other directories
// against a sysroot elsewhere gives the same module, though it embeds
// header paths (__FILE__) and, before stripping, debug info.
func TestBuildTreeReproducible(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const csrc = "#include <tinyhdr.h>\nconst char *tiny(void) { return tiny_where(); }\nconst char *tiny_src(void) { return __FILE__; }\n"
	var sums []string
	for i := 0; i < 2; i++ {
		b := newLocalBuilder(t)
		writeTree(t, b.sysroot, map[string]string{
			"usr/include/tinyhdr.h": "static inline const char *tiny_where(void) { return __FILE__; }\n",
		})
		r := Recipe{Source: "tiny"}
		out := filepath.Join(t.TempDir(), "out")
		res := &Result{}
		if err := b.buildTree(ctx, r, tinyExtension(t, csrc), t.TempDir(), out, res, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		so, err := os.ReadFile(filepath.Join(res.Dir, "usr/lib/postgresql/17/lib/tiny.so"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(so), "\x00/usr/include/tinyhdr.h\x00") {
			t.Errorf("tiny.so does not name the header by its path in the image")
		}
		if strings.Contains(string(so), b.sysroot) {
			t.Errorf("tiny.so names the sysroot's path on the build machine")
		}
		sums = append(sums, res.Files[0].SHA256)
	}
	if sums[0] != sums[1] {
		t.Errorf("tiny.so built twice in other directories differs: %s, %s", sums[0], sums[1])
	}
}

// TestBuildTreeCompileError: a recipe whose source does not compile fails
// with the recipe's name and the compiler's message, and leaves no result.
func TestBuildTreeCompileError(t *testing.T) {
	b := newLocalBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := Recipe{Package: "postgresql-17-broken", Source: "broken"}
	outParent := filepath.Join(t.TempDir(), "out")
	out := filepath.Join(outParent, "broken-0123")
	src := tinyExtension(t, "int tiny(void) { return 42 }\n")
	err := b.buildTree(ctx, r, src, t.TempDir(), out, &Result{Key: "k"}, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("a source that does not compile built")
	}
	for _, want := range []string{"postgresql-17-broken (source broken)", "make -j2 failed", "tiny.c:1:", "error: expected ';'"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if entries, _ := os.ReadDir(outParent); len(entries) > 0 {
		t.Errorf("a failed build left %s in the output directory", entries[0].Name())
	}
}

// TestCheckSymbolVersions: a module that needs a symbol version the
// sysroot's library of that name does not define is refused. Two builds of
// a tiny libfoo.so.1 stand in for an old and a new libc.
func TestCheckSymbolVersions(t *testing.T) {
	b := newLocalBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"foo.c":     "int foo(void) { return 1; }\nint bar(void) { return 2; }\n",
		"old.map":   "FOO_1 { global: foo; local: *; };\n",
		"new.map":   "FOO_1 { global: foo; local: *; };\nFOO_2 { global: bar; } FOO_1;\n",
		"v.c":       "int bar(void);\nint v(void) { return bar(); }\n",
		"new/.keep": "",
	})
	cc := func(args ...string) {
		t.Helper()
		args = append([]string{"-shared", "-fPIC", "-nostdlib"}, args...)
		if out, err := runHost(ctx, b.cc.CC, args...); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	lib := filepath.Join(b.sysroot, multiarchLibDir, "libfoo.so.1")
	os.MkdirAll(filepath.Dir(lib), 0o755)
	cc("-o", lib, "-Wl,-soname,libfoo.so.1", "-Wl,--version-script="+filepath.Join(dir, "old.map"), filepath.Join(dir, "foo.c"))
	newLib := filepath.Join(dir, "new", "libfoo.so.1")
	cc("-o", newLib, "-Wl,-soname,libfoo.so.1", "-Wl,--version-script="+filepath.Join(dir, "new.map"), filepath.Join(dir, "foo.c"))
	so := filepath.Join(dir, "root", "usr/lib/v.so")
	os.MkdirAll(filepath.Dir(so), 0o755)
	cc("-o", so, filepath.Join(dir, "v.c"), newLib)
	files := []File{{Path: "usr/lib/v.so"}}

	err := checkSymbolVersions(filepath.Join(dir, "root"), b.sysroot, files)
	if err == nil || !strings.Contains(err.Error(), "bar@FOO_2 (libfoo.so.1)") {
		t.Fatalf("checkSymbolVersions against the old library = %v, want a refusal naming bar@FOO_2", err)
	}
	b2, _ := os.ReadFile(newLib)
	if err := os.WriteFile(lib, b2, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkSymbolVersions(filepath.Join(dir, "root"), b.sysroot, files); err != nil {
		t.Fatalf("checkSymbolVersions against the new library: %v", err)
	}
	os.Remove(lib)
	if err := checkSymbolVersions(filepath.Join(dir, "root"), b.sysroot, files); err == nil || !strings.Contains(err.Error(), "needs libfoo.so.1") {
		t.Fatalf("checkSymbolVersions without the library = %v", err)
	}
}
