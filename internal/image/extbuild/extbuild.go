// Package extbuild builds PostgreSQL extensions that Debian does not ship for
// i386 from Debian's own source packages, for the image's PostgreSQL 17.
//
// Trixie builds its postgresql-17-* extensions for 64-bit architectures only
// (their Build-Depends name architecture-is-64-bit), so the i386 index has no
// postgresql-17-pgvector. The source package is the same everywhere, and
// i386 binaries run natively on the amd64 build machine, so Build:
//
//  1. downloads the source package (.dsc, orig and debian tarballs) from the
//     suite's signed Sources index, through a private apt state directory with
//     a deb-src line (the host's apt setup is never touched), checks every
//     file's SHA256 against that index and unpacks it with dpkg-source, which
//     applies Debian's patches;
//  2. unpacks an i386 toolchain (gcc, make, libc6-dev, the PostgreSQL 17
//     server headers and PGXS) from the same archive into a builder root,
//     cached by the packages' versions and checksums;
//  3. runs the PGXS build in a chroot of that root, in a private mount
//     namespace and with an i686 personality, with the recipe's make
//     arguments (for pgvector, OPTFLAGS= so -march=native never picks up the
//     build machine's AVX: v86 emulates an i686 with SSE2/SSE3 only), then
//     make install DESTDIR, strip;
//  4. keeps the installed tree under the cache, keyed by the recipe, the
//     source files' checksums and the toolchain's packages, so a rebuild with
//     the same inputs is a cache hit.
//
// Use:
//
//	r, _ := extbuild.Lookup("postgresql-17-pgvector")
//	res, err := extbuild.Build(ctx, extbuild.Config{Apt: apt, CacheDir: "build/cache"}, r)
//	...
//	err = extbuild.Install(res, root) // copies vector.so, vector.control, vector--*.sql
//
// Build needs root (chroot, mount namespace), apt-get and dpkg-source
// (Debian's dpkg-dev) on the host.
package extbuild

import (
	"context"
	"log/slog"

	"github.com/pgwasm/pgwasm/internal/image/deb"
)

// Version changes whenever the build steps change in a way that changes the
// output; it is part of every cache key.
const Version = "1"

// Config says where packages come from and where the cache lives.
type Config struct {
	// Apt resolves and downloads the i386 toolchain. Its Mirror and
	// Keyring also serve the source package.
	Apt *deb.Apt
	// CacheDir holds the source apt state, the builder roots and the
	// results, under CacheDir/extbuild.
	CacheDir string
	// SourceSuite is the suite the source package comes from; empty means
	// trixie, the suite of the image's PostgreSQL 17.
	SourceSuite string
	// Jobs is make's -j; 0 means the number of CPUs.
	Jobs   int
	Logger *slog.Logger
}

// Recipe says how to build one extension from its Debian source package.
type Recipe struct {
	// Package is the binary package Debian builds on 64-bit architectures,
	// e.g. postgresql-17-pgvector: what a user asks for.
	Package string
	// Source is the Debian source package, e.g. pgvector.
	Source string
	// BuildDepends are extra i386 packages the build needs besides the
	// toolchain (gcc, make, libc6-dev, PostgreSQL 17 headers and PGXS).
	BuildDepends []string
	// MakeArgs are added to both make and make install.
	MakeArgs []string
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

// Result is one built extension.
type Result struct {
	// Dir is a tree to copy into the image root as it is: e.g.
	// usr/lib/postgresql/17/lib/vector.so and
	// usr/share/postgresql/17/extension/vector*.
	Dir string `json:"-"`
	// Package and Source name what was built; Version is the source
	// package's Debian version, e.g. 0.8.0-1.
	Package string `json:"package"`
	Source  string `json:"source"`
	Version string `json:"version"`
	// Key hashes every input: recipe, source files, toolchain packages and
	// Version. The image's cache key should include it.
	Key string `json:"key"`
	// Files are the paths under Dir, sorted, with their sizes.
	Files []File `json:"files"`
	// Toolchain are the i386 packages the extension was built with.
	Toolchain []deb.Package `json:"toolchain"`
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
