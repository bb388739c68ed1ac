// Package extbuild builds PostgreSQL extensions that Debian does not ship for
// i386 from Debian's own source packages, for the image's PostgreSQL 17.
//
// Trixie builds its postgresql-17-* extensions for 64-bit architectures only
// (their Build-Depends name architecture-is-64-bit), so the i386 index has no
// postgresql-17-pgvector. The source package is the same everywhere, so Build
// cross-compiles it on the build machine:
//
//  1. downloads the source package (.dsc, orig and debian tarballs) from the
//     suite's signed Sources index, through a private apt state directory with
//     a deb-src line (the host's apt setup is never touched), checks every
//     file's SHA256 against that index and unpacks it with dpkg-source, which
//     applies Debian's patches;
//  2. unpacks a sysroot from the image's own i386 packages (libc6-dev and
//     friends, PostgreSQL 17's server headers and PGXS), cached by their
//     versions and checksums. Building against the image's libc, not the
//     cross compiler's older one, means the extension asks only for symbol
//     versions the image has; Build checks that before it takes a result;
//  3. runs the host's make on the PGXS makefiles with Debian's
//     i686-linux-gnu-gcc and --sysroot. The package's pg_config is an i386
//     program, so a generated host shell script answers for it, pointing
//     PGXS at the sysroot for what it reads and at the image's paths for
//     what it installs. The recipe's make arguments apply (for pgvector,
//     OPTFLAGS= so -march=native never picks up the build machine's AVX: v86
//     emulates an i686 with SSE2/SSE3 only), then make install DESTDIR and
//     the cross strip;
//  4. keeps the installed tree under the cache, keyed by the recipe, the
//     source files' checksums, the sysroot's packages and the cross
//     compiler's version and Debian packages, so a rebuild with the same
//     inputs is a cache hit.
//
// A recipe with a Local source tree (the project's own pgwasm module, from
// guest/pgwasm-ext) skips step 1: the tree is copied as it is, and its
// files' checksums stand for the source package's in the key.
//
// No i386 program runs on the build machine, and nothing needs root: every
// program extbuild starts goes through hostexec, which refuses foreign ELF
// files, and make's PATH holds host directories only. The i386 code that
// used to run here (gcc, make and sh from the image's archive, in a chroot)
// needed root and failed with "Exec format error" on hosts without IA32
// emulation.
//
// Use:
//
//	r, _ := extbuild.Lookup("postgresql-17-pgvector")
//	res, err := extbuild.Build(ctx, extbuild.Config{Apt: apt, CacheDir: "build/cache"}, r)
//	...
//	err = extbuild.Install(res, root) // copies vector.so, vector.control, vector--*.sql
//
// Build needs, on the host, gcc-i686-linux-gnu (the cross compiler and
// binutils), make, apt-get and dpkg-source (Debian's dpkg-dev).
package extbuild

import (
	"context"
	"io/fs"
	"log/slog"

	"github.com/pgwasm/pgwasm/internal/image/deb"
)

// Version changes whenever the build steps change in a way that changes the
// output; it is part of every cache key.
const Version = "3"

// Config says where packages come from and where the cache lives.
type Config struct {
	// Apt resolves and downloads the i386 sysroot packages. Its Mirror
	// and Keyring also serve the source package.
	Apt *deb.Apt
	// CacheDir holds the source apt state, the sysroot and the results,
	// under CacheDir/extbuild.
	CacheDir string
	// SourceSuite is the suite the source package comes from; empty means
	// trixie, the suite of the image's PostgreSQL 17.
	SourceSuite string
	// Jobs is make's -j; 0 means the number of CPUs.
	Jobs   int
	Logger *slog.Logger
}

// Recipe says how to build one extension from its Debian source package,
// or from a source tree of the project's own (Local).
type Recipe struct {
	// Package is the binary package Debian builds on 64-bit architectures,
	// e.g. postgresql-17-pgvector: what a user asks for.
	Package string
	// Source is the Debian source package, e.g. pgvector.
	Source string
	// BuildDepends are extra i386 packages (headers, libraries to link
	// with) unpacked into the sysroot with their dependencies, besides
	// libc6-dev and PostgreSQL 17's headers and PGXS.
	BuildDepends []string
	// MakeArgs are added to both make and make install.
	MakeArgs []string
	// Local, when set, is a source tree to build instead of a Debian
	// source package: a PGXS Makefile and its sources, such as the
	// project's own pgwasm module (guest/pgwasm-ext). Nothing is
	// downloaded for it; its files' SHA256s take the source package's
	// place in the cache key, and Source names it.
	Local fs.FS `json:"-"`
}

// Lookup returns the recipe for a binary package name such as
// postgresql-17-pgvector, or false when extbuild cannot build it.
func Lookup(pkg string) (Recipe, bool) {
	switch pkg {
	case "postgresql-17-pgvector", "pgvector":
		return Recipe{
			Package: "postgresql-17-pgvector",
			Source:  "pgvector",
			// pgvector's Makefile sets OPTFLAGS = -march=native (Debian's
			// no-native patch comments that out; say it again in case a
			// later upload drops the patch). The build machine's CPU has
			// AVX; the emulated one has SSE3 at most.
			MakeArgs: []string{"OPTFLAGS="},
		}, true
	}
	return Recipe{}, false
}

// ModuleRecipe is the recipe of the project's own pgwasm module, from its
// source tree (guest.ExtensionModule). libssl-dev brings the OpenSSL headers
// and libcrypto.so to link with; the image's server links the same
// libcrypto.so.3.
func ModuleRecipe(src fs.FS) Recipe {
	return Recipe{Package: "pgwasm", Source: "pgwasm", Local: src, BuildDepends: []string{"libssl-dev"}}
}

// Result is one built extension.
type Result struct {
	// Dir is a tree to copy into the image root as it is: e.g.
	// usr/lib/postgresql/17/lib/vector.so and
	// usr/share/postgresql/17/extension/vector*.
	Dir string `json:"-"`
	// Package and Source name what was built; Version is the source
	// package's Debian version, e.g. 0.8.0-1, or for a Local tree
	// "src-" and the start of its content hash.
	Package string `json:"package"`
	Source  string `json:"source"`
	Version string `json:"version"`
	// Key hashes every input: recipe, source files, sysroot packages, the
	// cross compiler and Version. The image's cache key should include it.
	Key string `json:"key"`
	// Files are the paths under Dir, sorted, with their sizes.
	Files []File `json:"files"`
	// Sysroot are the i386 packages the extension was built against.
	Sysroot []deb.Package `json:"sysroot"`
	// Compiler is the host's cross compiler that built it.
	Compiler *CrossCompiler `json:"compiler"`
	// CacheHit says the result came from the cache.
	CacheHit bool `json:"-"`
}

// File is one installed file.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Build builds the recipe's extension for i386, or returns the cached result
// of an earlier build with the same inputs.
func Build(ctx context.Context, cfg Config, r Recipe) (*Result, error) {
	return build(ctx, cfg, r)
}

// Install copies a result's files into root, creating directories as
// needed and overwriting files of the same name.
func Install(res *Result, root string) error {
	return install(res, root)
}

// FindCrossCompiler locates the host's i686 cross compiler and says who it
// is; the guest kernel's build (kernelbuild) uses the same one.
func FindCrossCompiler(ctx context.Context) (*CrossCompiler, error) {
	return findCrossCompiler(ctx)
}
