package extbuild

import (
	"bytes"
	"context"
	"debug/elf"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/guest"
	"github.com/pgwasm/pgwasm/internal/hostexec"
	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// newTestConfig uses the real Debian archive through the host's apt
// configuration. PGWASM_TEST_APT_DIR and PGWASM_TEST_CACHE_DIR let repeated
// runs reuse package lists, downloads and the sysroot. It needs no root.
func newTestConfig(t *testing.T) Config {
	t.Helper()
	if testing.Short() {
		t.Skip("downloads packages and compiles")
	}
	for _, tool := range []string{"apt-get", "dpkg-deb", "dpkg-source", "make", crossTriplet + "-gcc"} {
		if _, err := hostexec.Command(context.Background(), tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
	mirror, err := deb.MirrorFromHost("/etc/apt")
	if err != nil {
		t.Skipf("host has no Debian archive configured: %v", err)
	}
	aptDir := os.Getenv("PGWASM_TEST_APT_DIR")
	if aptDir == "" {
		aptDir = t.TempDir()
	}
	cacheDir := os.Getenv("PGWASM_TEST_CACHE_DIR")
	if cacheDir == "" {
		cacheDir = t.TempDir()
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return Config{
		Apt: &deb.Apt{
			Dir: aptDir, Mirror: mirror, Suites: []string{"bookworm", "trixie"}, Arch: "i386",
			Keyring: "/usr/share/keyrings/debian-archive-keyring.gpg", MaxListAge: 12 * time.Hour, Logger: log,
		},
		CacheDir: cacheDir,
		Logger:   log,
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// forbidden matches instructions the emulated CPU (i686, SSE2/SSE3, POPCNT)
// lacks: SSSE3, SSE4.1/4.2, AVX (any VEX-encoded v-mnemonic or ymm/zmm
// register), FMA, F16C.
var forbidden = regexp.MustCompile(`(?m)^\s*[0-9a-f]+:\s+(?:[0-9a-f]{2} )+\s*(` +
	// SSSE3
	`pshufb|palignr|phaddw|phaddd|phaddsw|phsubw|phsubd|phsubsw|pmaddubsw|pmulhrsw|psignb|psignw|psignd|pabsb|pabsw|pabsd|` +
	// SSE4.1 / SSE4.2
	`pmulld|pmuldq|ptest|pblendvb|pblendw|blendps|blendpd|blendvps|blendvpd|dpps|dppd|roundps|roundpd|roundss|roundsd|` +
	`insertps|extractps|pinsrb|pinsrd|pextrb|pextrd|pminsb|pminsd|pmaxsb|pmaxsd|pminuw|pminud|pmaxuw|pmaxud|pmovsx\w*|pmovzx\w*|` +
	`packusdw|pcmpeqq|pcmpgtq|mpsadbw|phminposuw|movntdqa|crc32\w*|pcmp[ei]str[im]|` +
	// AVX, FMA, F16C (VEX/EVEX encoded)
	`v[a-z0-9]+)\b|%[yz]mm`)

func TestForbiddenPattern(t *testing.T) {
	for _, tc := range []struct {
		line string
		bad  bool
	}{
		{"   1a2b:\t66 0f 38 00 c1       \tpshufb %xmm1,%xmm0", true},
		{"   1a2b:\tc5 f9 ef c0          \tvpxor  %xmm0,%xmm0,%xmm0", true},
		{"   1a2b:\tc4 e2 79 13 c0       \tvcvtph2ps %xmm0,%xmm0", true},
		{"   1a2b:\t66 0f 38 40 c1       \tpmulld %xmm1,%xmm0", true},
		{"   1a2b:\t0f 58 c1             \taddps  %xmm1,%xmm0", false},
		{"   1a2b:\td9 45 08             \tflds   0x8(%ebp)", false},
		{"   1a2b:\tf3 0f b8 c0          \tpopcnt %eax,%eax", false},
		{"   1a2b:\te8 00 00 00 00       \tcall   1a30 <vector_in>", false},
	} {
		if got := forbidden.MatchString(tc.line); got != tc.bad {
			t.Errorf("forbidden.MatchString(%q) = %v, want %v", tc.line, got, tc.bad)
		}
	}
}

func TestBuildPGVector(t *testing.T) {
	cfg := newTestConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r, _ := Lookup("postgresql-17-pgvector")
	start := time.Now()
	res, err := Build(ctx, cfg, r)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s %s in %s (cache hit %v)", res.Source, res.Version, time.Since(start).Round(time.Millisecond), res.CacheHit)

	so := filepath.Join(res.Dir, "usr/lib/postgresql/17/lib/vector.so")
	for _, p := range []string{so, filepath.Join(res.Dir, "usr/share/postgresql/17/extension/vector.control")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("result lacks %s: %v", p, err)
		}
	}
	sqls, _ := filepath.Glob(filepath.Join(res.Dir, "usr/share/postgresql/17/extension/vector--*.sql"))
	if len(sqls) == 0 {
		t.Fatal("result has no vector--*.sql")
	}
	for _, f := range res.Files {
		if !strings.HasPrefix(f.Path, "usr/lib/postgresql/17/lib/") && !strings.HasPrefix(f.Path, "usr/share/postgresql/17/extension/") {
			t.Errorf("result has %s, outside the image's extension directories", f.Path)
		}
	}
	f, err := elf.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS32 || f.Machine != elf.EM_386 || f.Type != elf.ET_DYN {
		t.Fatalf("vector.so is %v %v %v, want ELFCLASS32 EM_386 ET_DYN", f.Class, f.Machine, f.Type)
	}
	libs, _ := f.ImportedLibraries()
	syms, _ := f.ImportedSymbols()
	versions := map[string]bool{}
	for _, s := range syms {
		if s.Version != "" {
			versions[s.Library+" "+s.Version] = true
		}
	}
	f.Close()
	st, _ := os.Stat(so)
	t.Logf("vector.so: %d bytes, needs %v, symbol versions %v; %d .sql files", st.Size(), libs, sortedKeys(versions), len(sqls))

	buildLog, err := os.ReadFile(filepath.Join(filepath.Dir(res.Dir), "build.log"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buildLog, []byte("-march=native")) {
		t.Error("the build used -march=native")
	}
	if !bytes.Contains(buildLog, []byte("vector.c")) {
		t.Errorf("build.log does not show vector.c being compiled:\n%s", buildLog)
	}
	if !bytes.Contains(buildLog, []byte(crossTriplet+"-gcc --sysroot=")) {
		t.Errorf("build.log does not show the cross compiler with --sysroot:\n%s", rootfs.Tail(buildLog, 5))
	}
	checkInstructions(ctx, t, so)
	if b, _ := os.ReadFile(so); bytes.Contains(b, []byte("/extbuild/")) {
		t.Error("vector.so names a path of the build machine's cache (header paths must be the image's)")
	}

	// The same inputs again: a cache hit.
	start = time.Now()
	again, err := Build(ctx, cfg, r)
	if err != nil {
		t.Fatal(err)
	}
	if !again.CacheHit || again.Key != res.Key {
		t.Fatalf("second Build: cache hit %v, key %s; want a hit with key %s", again.CacheHit, again.Key, res.Key)
	}
	t.Logf("cache hit in %s", time.Since(start).Round(time.Millisecond))

	// A cached result whose file changed is rebuilt, not taken.
	control := filepath.Join(res.Dir, "usr/share/postgresql/17/extension/vector.control")
	good, _ := os.ReadFile(control)
	if err := os.WriteFile(control, []byte("corrupt"), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	rebuilt, err := Build(ctx, cfg, r)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(control); rebuilt.CacheHit || !bytes.Equal(got, good) {
		t.Fatalf("Build after corrupting the cached result: cache hit %v, vector.control %q", rebuilt.CacheHit, got)
	}
	t.Logf("corrupt cached result rebuilt in %s", time.Since(start).Round(time.Millisecond))

	testPGXSAgainstSysroot(ctx, t, cfg)
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkInstructions disassembles so and fails on instructions the emulated
// CPU lacks. objdump is a host program; the cross binutils' one is there
// whenever the cross compiler is.
func checkInstructions(ctx context.Context, t *testing.T, so string) {
	t.Helper()
	var dis []byte
	var err error
	for _, objdump := range []string{crossTriplet + "-objdump", "objdump"} {
		if dis, err = runHost(ctx, objdump, "-d", "--no-show-raw-insn", so); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("cannot disassemble vector.so: %v", err)
	}
	// objdump without raw bytes prints "addr:\tmnemonic"; add a fake
	// byte column so the pattern (tested above) applies.
	text := regexp.MustCompile(`(?m)^(\s*[0-9a-f]+:)\t`).ReplaceAllString(string(dis), "$1\t00 \t")
	if m := forbidden.FindAllString(text, 5); len(m) > 0 {
		t.Errorf("vector.so has instructions the emulated CPU lacks: %q", m)
	}
	if n := strings.Count(text, "\n"); n < 1000 {
		t.Errorf("the disassembly of vector.so has only %d lines", n)
	}
}

// testPGXSAgainstSysroot builds two tiny PGXS extensions from local source
// trees against the real sysroot (which Build left in the cache): one that
// includes postgres.h and fmgr.h and links, and one that does not compile.
func testPGXSAgainstSysroot(ctx context.Context, t *testing.T, cfg Config) {
	t.Helper()
	cache, err := cacheDir(cfg.CacheDir)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := Lookup("pgvector")
	sys, err := resolveSysroot(ctx, cfg.Apt, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Apt.Fetch(ctx, sys); err != nil {
		t.Fatal(err)
	}
	sysDir, err := sysrootDir(ctx, cache, sys, cfg.Logger)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := findCrossCompiler(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBuilder(cc, sysDir, pgPackageVersion(sys), 0)
	if err != nil {
		t.Fatal(err)
	}
	const good = `#include "postgres.h"
#include "fmgr.h"
#include <math.h>
#include <string.h>
PG_MODULE_MAGIC;
PG_FUNCTION_INFO_V1(tiny_len);
Datum tiny_len(PG_FUNCTION_ARGS) { return Int32GetDatum((int32) strlen(PG_GETARG_CSTRING(0)) + (int32) sqrt(4.0)); }
`
	for _, tc := range []struct {
		name, src, wantErr string
	}{
		{"tiny", good, ""},
		{"broken", strings.Replace(good, "PG_MODULE_MAGIC;", "PG_MODULE_MAGIC", 1), "error:"},
	} {
		src := filepath.Join(t.TempDir(), "src")
		writeTree(t, src, map[string]string{
			"Makefile":      "MODULES = tiny\nEXTENSION = tiny\nDATA = tiny--1.0.sql\nSHLIB_LINK = -lm\nPG_CONFIG ?= pg_config\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n",
			"tiny.c":        tc.src,
			"tiny.control":  "default_version = '1.0'\nmodule_pathname = '$libdir/tiny'\n",
			"tiny--1.0.sql": "CREATE FUNCTION tiny_len(cstring) RETURNS int AS 'MODULE_PATHNAME' LANGUAGE C STRICT;\n",
		})
		out := filepath.Join(t.TempDir(), "out", tc.name)
		res := &Result{Package: "postgresql-17-" + tc.name, Source: tc.name, Key: "k"}
		rec := Recipe{Package: res.Package, Source: tc.name}
		err := b.buildTree(ctx, rec, src, t.TempDir(), out, res, cfg.Logger)
		if tc.wantErr == "" {
			if err != nil {
				t.Fatalf("PGXS build of a tiny extension against the sysroot: %v", err)
			}
			var paths []string
			for _, f := range res.Files {
				paths = append(paths, f.Path)
			}
			want := "usr/lib/postgresql/17/lib/tiny.so usr/share/postgresql/17/extension/tiny--1.0.sql usr/share/postgresql/17/extension/tiny.control"
			if strings.Join(paths, " ") != want {
				t.Errorf("tiny installed %q, want %q", paths, want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "postgresql-17-broken (source broken)") || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("PGXS build of a broken extension: %v", err)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("a failed build left %s", out)
		}
	}
}

// The project's own module (guest/pgwasm-ext) builds from its Local tree:
// only pgwasm.so, for i386, linked with the image's libcrypto at a version
// it defines, calling the OpenSSL function the reseed relies on; the same
// tree again is a cache hit.
func TestBuildModule(t *testing.T) {
	cfg := newTestConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r := ModuleRecipe(guest.ExtensionModule())
	res, err := Build(ctx, cfg, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 1 || res.Files[0].Path != "usr/lib/postgresql/17/lib/pgwasm.so" || !strings.HasPrefix(res.Version, "src-") {
		t.Fatalf("built %s %v, want only usr/lib/postgresql/17/lib/pgwasm.so", res.Version, res.Files)
	}
	so := filepath.Join(res.Dir, res.Files[0].Path)
	f, err := elf.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	syms, _ := f.ImportedSymbols()
	f.Close()
	imported := map[string]string{}
	for _, s := range syms {
		imported[s.Name] = s.Library + " " + s.Version
	}
	if got := imported["RAND_poll"]; got != "libcrypto.so.3 OPENSSL_3.0.0" {
		t.Errorf("RAND_poll imported as %q, want libcrypto.so.3 OPENSSL_3.0.0", got)
	}
	for _, name := range []string{"setseed", "pg_strong_random", "standard_ExecutorStart", "standard_ProcessUtility"} {
		if _, ok := imported[name]; !ok {
			t.Errorf("pgwasm.so does not import %s from the server", name)
		}
	}
	again, err := Build(ctx, cfg, r)
	if err != nil {
		t.Fatal(err)
	}
	if !again.CacheHit || again.Key != res.Key {
		t.Fatalf("second Build: cache hit %v, key %s; want a hit with key %s", again.CacheHit, again.Key, res.Key)
	}
}
