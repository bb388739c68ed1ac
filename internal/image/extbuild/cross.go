package extbuild

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/pgwasm/pgwasm/internal/hostexec"
)

// crossTriplet names Debian's cross toolchain for i386 (gcc-i686-linux-gnu,
// binutils-i686-linux-gnu): amd64 programs that write i386 code.
const crossTriplet = "i686-linux-gnu"

// crossPackages are the host packages whose versions identify the cross
// toolchain in the cache key; %s is gcc's major version. The metapackage's
// version does not move with a point release of the compiler, so the
// versioned compiler package and binutils (assembler, linker) are named too.
var crossPackages = []string{"gcc-" + crossTriplet, "gcc-%s-" + crossTriplet, "binutils-" + crossTriplet}

// CrossCompiler identifies the host's i686 cross compiler.
type CrossCompiler struct {
	// CC and Strip are absolute paths on the build machine; they are not
	// part of the cache key (the same compiler may live elsewhere).
	CC    string `json:"-"`
	Strip string `json:"-"`
	// Version is gcc -dumpfullversion, Target gcc -dumpmachine, Ident the
	// first line of gcc --version (it names the Debian revision).
	Version string `json:"version"`
	Target  string `json:"target"`
	Ident   string `json:"ident"`
	// Packages are "name version" of crossPackages as dpkg knows them
	// ("name not-installed" when it does not: a compiler built by hand).
	Packages []string `json:"packages"`
}

// MissingCompilerError says the host has no i686 cross compiler.
type MissingCompilerError struct {
	Program string
	Err     error
}

func (e *MissingCompilerError) Error() string {
	var foreign *hostexec.ForeignError
	if errors.As(e.Err, &foreign) {
		return fmt.Sprintf("cannot build extensions: the i686 cross compiler %s found on PATH is not a program for this host; install gcc-%s (make setup does): %v", e.Program, crossTriplet, e.Err)
	}
	return fmt.Sprintf("cannot build extensions: the i686 cross compiler %s is missing; install gcc-%s (make setup does): %v", e.Program, crossTriplet, e.Err)
}

func (e *MissingCompilerError) Unwrap() error { return e.Err }

// findCrossCompiler locates the cross compiler and strip and asks them who
// they are. Both are host programs; hostexec refuses anything else.
func findCrossCompiler(ctx context.Context) (*CrossCompiler, error) {
	cc := &CrossCompiler{}
	for _, t := range []struct {
		name string
		path *string
	}{{crossTriplet + "-gcc", &cc.CC}, {crossTriplet + "-strip", &cc.Strip}} {
		cmd, err := hostexec.Command(ctx, t.name, "--version")
		if err != nil {
			return nil, &MissingCompilerError{Program: t.name, Err: err}
		}
		out, err := cmd.Output()
		if err != nil {
			return nil, &MissingCompilerError{Program: t.name, Err: fmt.Errorf("%s --version: %w", t.name, err)}
		}
		*t.path = cmd.Path
		if t.name == crossTriplet+"-gcc" {
			cc.Ident, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
		}
	}
	for _, q := range []struct {
		arg string
		to  *string
	}{{"-dumpfullversion", &cc.Version}, {"-dumpmachine", &cc.Target}} {
		out, err := runHost(ctx, cc.CC, q.arg)
		if err != nil {
			return nil, &MissingCompilerError{Program: crossTriplet + "-gcc", Err: err}
		}
		*q.to = strings.TrimSpace(string(out))
	}
	if !strings.HasPrefix(cc.Target, "i686-") && !strings.HasPrefix(cc.Target, "i386-") {
		return nil, fmt.Errorf("cannot build extensions: %s targets %s, not i386", cc.CC, cc.Target)
	}
	major, _, _ := strings.Cut(cc.Version, ".")
	for _, p := range crossPackages {
		if strings.Contains(p, "%s") {
			p = fmt.Sprintf(p, major)
		}
		// A failure (no dpkg, package unknown) is an identity too: the
		// compiler's --version line still tells versions apart.
		out, err := runHost(ctx, "dpkg-query", "-W", "-f=${Version}", p)
		v := strings.TrimSpace(string(out))
		if err != nil || v == "" {
			v = "not-installed"
		}
		cc.Packages = append(cc.Packages, p+" "+v)
	}
	return cc, nil
}

// runHost runs a host program through the exec guard and returns its
// standard output.
func runHost(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd, err := hostexec.Command(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Debian's PostgreSQL layout, as its pg_config reports it; MAJOR is
// MAJORVERSION from the package's Makefile.global.
const (
	pgMakefileGlobal = "usr/lib/postgresql/MAJOR/lib/pgxs/src/Makefile.global"
	pgPGXS           = "usr/lib/postgresql/MAJOR/lib/pgxs/src/makefiles/pgxs.mk"
	pgIncludeServer  = "usr/include/postgresql/MAJOR/server"
	pgIncludeDir     = "usr/include/postgresql"
	multiarchLibDir  = "usr/lib/i386-linux-gnu"
)

// pgMajor is the PostgreSQL major version extbuild builds for (the image's).
const pgMajor = "17"

func pgPath(p string) string { return strings.ReplaceAll(p, "MAJOR", pgMajor) }

// pgConfigShim is what pg_config would say about the sysroot's PostgreSQL,
// as a host shell script: the package's pg_config is an i386 program.
//
// Paths PGXS reads at build time (its own makefiles, headers, libraries)
// point into the sysroot; paths it installs to are the image's own, under
// make install's DESTDIR. Compiler flags keep Makefile.global's values with
// include and library directories made sysroot-relative ("-I=/usr/...").
type pgConfigShim struct {
	sysroot string
	cc      string // cross compiler with --sysroot
	vars    map[string]string
	version string // e.g. "PostgreSQL 17.12 (Debian 17.12-0+deb13u1)"
}

// readMakefileGlobal reads the simple "NAME = value" assignments of
// PostgreSQL's Makefile.global (the first of each name, which for the
// variables read here is the only one).
func readMakefileGlobal(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read PostgreSQL's Makefile.global from the sysroot: %w", err)
	}
	vars := map[string]string{}
	assign := regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*(?:=|:=|\+=)\s*(.*?)\s*$`)
	for _, line := range strings.Split(string(b), "\n") {
		m := assign.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if _, ok := vars[m[1]]; !ok {
			vars[m[1]] = m[2]
		}
	}
	for _, k := range []string{"VERSION", "MAJORVERSION", "CPPFLAGS", "CFLAGS"} {
		if _, ok := vars[k]; !ok {
			return nil, fmt.Errorf("%s sets no %s", path, k)
		}
	}
	if vars["MAJORVERSION"] != pgMajor {
		return nil, fmt.Errorf("%s is PostgreSQL %s, not %s", path, vars["MAJORVERSION"], pgMajor)
	}
	return vars, nil
}

// sysrootFlags makes the absolute -I and -L directories of a flags string
// relative to the sysroot: gcc replaces a leading "=" with --sysroot, so no
// host directory (say, an amd64 /usr/include/libxml2) is searched.
func sysrootFlags(flags string) string {
	f := strings.Fields(flags)
	for i, x := range f {
		for _, p := range []string{"-I/", "-L/", "-isystem/"} {
			if strings.HasPrefix(x, p) {
				f[i] = p[:len(p)-1] + "=" + x[len(p)-1:]
			}
		}
	}
	return strings.Join(f, " ")
}

// answers maps pg_config's options to their values, in pg_config's order.
func (s *pgConfigShim) answers() [][2]string {
	in := func(p string) string { return filepath.Join(s.sysroot, pgPath(p)) }
	ldflags := strings.ReplaceAll(s.vars["LDFLAGS"], "$(LDFLAGS_INTERNAL)", "-L=/"+multiarchLibDir)
	return [][2]string{
		{"bindir", "/usr/lib/postgresql/" + pgMajor + "/bin"},
		{"docdir", "/usr/share/doc/postgresql-doc-" + pgMajor},
		{"htmldir", "/usr/share/doc/postgresql-doc-" + pgMajor},
		{"includedir", in(pgIncludeDir)},
		{"pkgincludedir", in(pgIncludeDir)},
		{"includedir-server", in(pgIncludeServer)},
		{"libdir", in(multiarchLibDir)},
		{"pkglibdir", "/usr/lib/postgresql/" + pgMajor + "/lib"},
		{"localedir", "/usr/share/locale"},
		{"mandir", "/usr/share/postgresql/" + pgMajor + "/man"},
		{"sharedir", "/usr/share/postgresql/" + pgMajor},
		{"sysconfdir", "/etc/postgresql-common"},
		{"pgxs", in(pgPGXS)},
		// The i386 binary's configure line is compiled into it; nothing
		// in a PGXS build reads it.
		{"configure", ""},
		{"cc", s.cc},
		{"cppflags", sysrootFlags(s.vars["CPPFLAGS"])},
		{"cflags", s.vars["CFLAGS"]},
		{"cflags_sl", s.vars["CFLAGS_SL"]},
		{"ldflags", sysrootFlags(ldflags)},
		{"ldflags_ex", sysrootFlags(s.vars["LDFLAGS_EX"])},
		{"ldflags_sl", sysrootFlags(s.vars["LDFLAGS_SL"])},
		{"libs", sysrootFlags(s.vars["LIBS"])},
		{"version", s.version},
	}
}

// script is the shim: one option per argument, one answer per line, and
// with no arguments every "NAME = value", as pg_config does.
func (s *pgConfigShim) script() string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# pg_config for the i386 sysroot " + s.sysroot + ", written by pgwasm's extension build:\n" +
		"# the package's pg_config is an i386 program and never runs on the build machine.\n")
	b.WriteString("if [ $# -eq 0 ]; then\n")
	for _, a := range s.answers() {
		fmt.Fprintf(&b, "\techo %s\n", shQuote(strings.ToUpper(a[0])+" = "+a[1]))
	}
	b.WriteString("\texit 0\nfi\nfor a; do\n\tcase $a in\n")
	for _, a := range s.answers() {
		fmt.Fprintf(&b, "\t--%s) echo %s ;;\n", a[0], shQuote(a[1]))
	}
	b.WriteString("\t*) echo \"pg_config (pgwasm cross build): unknown option $a\" >&2; exit 1 ;;\n\tesac\ndone\n")
	return b.String()
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// safePath matches directory names make and the compiler's command line can
// carry unquoted.
var safePath = regexp.MustCompile(`^[A-Za-z0-9_./+,@~-]+$`)

// checkSymbolVersions checks that every versioned symbol an ELF file in dir
// imports is defined, with that version, by the library of that name in
// the sysroot: the image's own libraries, so vector.so asks for nothing the
// image's libc lacks (the cross compiler's own libc is older).
func checkSymbolVersions(dir, sysroot string, files []File) error {
	defs := map[string]map[string]bool{} // library -> versions it defines
	libVersions := func(lib string) (map[string]bool, error) {
		if v, ok := defs[lib]; ok {
			return v, nil
		}
		var path string
		for _, d := range []string{multiarchLibDir, "usr/lib", "lib/i386-linux-gnu", "lib"} {
			if _, err := os.Stat(filepath.Join(sysroot, d, lib)); err == nil {
				path = filepath.Join(sysroot, d, lib)
				break
			}
		}
		if path == "" {
			return nil, fmt.Errorf("it needs %s, which is in none of the sysroot's packages", lib)
		}
		f, err := elf.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		vs, err := f.DynamicVersions()
		if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
			return nil, fmt.Errorf("cannot read the versions %s defines: %w", lib, err)
		}
		set := map[string]bool{}
		for _, v := range vs {
			set[v.Name] = true
		}
		defs[lib] = set
		return set, nil
	}
	for _, fi := range files {
		path := filepath.Join(dir, filepath.FromSlash(fi.Path))
		f, err := elf.Open(path)
		if err != nil {
			continue // not an ELF file: SQL, control files
		}
		err = func() error {
			defer f.Close()
			if f.Class != elf.ELFCLASS32 || f.Machine != elf.EM_386 {
				return fmt.Errorf("it is %v %v, not 32-bit i386", f.Class, f.Machine)
			}
			needed, err := f.ImportedLibraries()
			if err != nil {
				return err
			}
			for _, lib := range needed {
				if _, err := libVersions(lib); err != nil {
					return err
				}
			}
			syms, err := f.ImportedSymbols()
			if err != nil {
				return err
			}
			var missing []string
			for _, s := range syms {
				if s.Version == "" || s.Library == "" {
					continue
				}
				set, err := libVersions(s.Library)
				if err != nil {
					return err
				}
				if !set[s.Version] {
					missing = append(missing, s.Name+"@"+s.Version+" ("+s.Library+")")
				}
			}
			if len(missing) > 0 {
				sort.Strings(missing)
				return fmt.Errorf("it needs symbol versions the image's libraries lack: %s", strings.Join(missing, ", "))
			}
			return nil
		}()
		if err != nil {
			return fmt.Errorf("built %s, but %w", fi.Path, err)
		}
	}
	return nil
}
