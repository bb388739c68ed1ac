package kernelbuild

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/guest/kernel"
	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/extbuild"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

func TestKeyNamesEveryInput(t *testing.T) {
	src := deb.Package{Package: manifest.Package{Name: "linux-source-6.1", Version: "6.1.176-1", SHA256: strings.Repeat("a", 64)}}
	cc := &extbuild.CrossCompiler{Version: "12.2.0", Target: "i686-linux-gnu", Ident: "i686-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0"}
	frag := []byte("# why\nCONFIG_PCI=y\n")
	base := Key(src, frag, cc, "gcc (Debian 12.2.0-14) 12.2.0")
	if again := Key(src, frag, cc, "gcc (Debian 12.2.0-14) 12.2.0"); again != base {
		t.Fatalf("Key is not stable: %s then %s", base, again)
	}
	newer := src
	newer.Version = "6.1.177-1"
	otherCC := *cc
	otherCC.Ident = "i686-linux-gnu-gcc (Debian 12.2.0-15) 12.2.0"
	for name, k := range map[string]string{
		"source version":  Key(newer, frag, cc, "gcc (Debian 12.2.0-14) 12.2.0"),
		"fragment":        Key(src, []byte("# why\nCONFIG_PCI=y\n# and\nCONFIG_NET=y\n"), cc, "gcc (Debian 12.2.0-14) 12.2.0"),
		"cross compiler":  Key(src, frag, &otherCC, "gcc (Debian 12.2.0-14) 12.2.0"),
		"host compiler":   Key(src, frag, cc, "gcc (Debian 12.2.0-15) 12.2.0"),
		"a reason's text": Key(src, []byte("# because\nCONFIG_PCI=y\n"), cc, "gcc (Debian 12.2.0-14) 12.2.0"),
	} {
		if k == base {
			t.Errorf("changing the %s leaves the key unchanged", name)
		}
	}
}

// A cache entry is taken only with its key and intact files; a damaged one
// is rebuilt, never put into an image.
func TestCachedResultIsChecked(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "arch/x86/boot"), 0o755)
	os.WriteFile(filepath.Join(tree, "arch/x86/boot/bzImage"), []byte("kernel image"), 0o644)
	os.WriteFile(filepath.Join(tree, ".config"), []byte("CONFIG_PCI=y\n"), 0o644)
	out := filepath.Join(dir, "cache", "6.1-0123")
	res := &Result{Key: "k1"}
	if err := store(tree, out, res); err != nil {
		t.Fatal(err)
	}
	got, err := readResult(out, "k1")
	if err != nil {
		t.Fatalf("readResult of a fresh entry: %v", err)
	}
	if b, _ := os.ReadFile(got.BzImage); string(b) != "kernel image" {
		t.Errorf("cached bzImage = %q", b)
	}
	if _, err := readResult(out, "k2"); err == nil {
		t.Error("readResult took an entry with another key")
	}
	for name, damage := range map[string]func(){
		"truncated bzImage": func() { os.WriteFile(filepath.Join(out, "bzImage"), []byte("kern"), 0o644) },
		"missing config":    func() { os.Remove(filepath.Join(out, "config")) },
		"corrupt json":      func() { os.WriteFile(filepath.Join(out, "result.json"), []byte("{"), 0o644) },
	} {
		if err := store(tree, out, &Result{Key: "k1"}); err != nil {
			t.Fatal(err)
		}
		damage()
		if _, err := readResult(out, "k1"); err == nil {
			t.Errorf("%s: readResult took the damaged entry", name)
		}
	}
}

// sourceDeb is the linux-source package in the image build's download
// cache (make test-go passes PGWASM_TEST_APT_DIR; `pgwasm image build
// --kernel source` downloads it).
func sourceDeb(t *testing.T) deb.Package {
	t.Helper()
	if testing.Short() {
		t.Skip("unpacks and configures the real kernel source (a minute or two)")
	}
	apt := os.Getenv("PGWASM_TEST_APT_DIR")
	if apt == "" {
		t.Skip("PGWASM_TEST_APT_DIR is not set (make test-go sets it to the cache's apt directory)")
	}
	debs, _ := filepath.Glob(filepath.Join(apt, "debs", "linux-source-*_all.deb"))
	if len(debs) == 0 {
		t.Skipf("no linux-source package in %s/debs: build an image with --kernel source first", apt)
	}
	name, rest, _ := strings.Cut(filepath.Base(debs[0]), "_")
	version, _, _ := strings.Cut(rest, "_")
	return deb.Package{Package: manifest.Package{Name: name, Version: version, Arch: "all"}, Path: debs[0]}
}

// The repository's fragment gives, with Debian's real kernel source, a
// configuration that has every option it asks for; one whose dependency
// is missing fails with the option's name.
func TestConfigureRealSource(t *testing.T) {
	src := sourceDeb(t)
	ctx := context.Background()
	cc, err := extbuild.FindCrossCompiler(ctx)
	if err != nil {
		t.Skipf("no cross compiler: %v", err)
	}
	work := t.TempDir()
	tree, err := unpackSource(ctx, src, work)
	if err != nil {
		t.Fatal(err)
	}
	b := &builder{tree: tree, work: work, cc: cc, jobs: 1}
	opts, err := ParseFragment(kernel.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.configure(ctx, kernel.Config, opts); err != nil {
		t.Fatalf("guest/kernel/pgwasm.config with %s %s: %v", src.Name, src.Version, err)
	}
	dot, _ := os.ReadFile(filepath.Join(tree, ".config"))
	for _, off := range []string{"CONFIG_MODULES", "CONFIG_SMP", "CONFIG_IPV6", "CONFIG_AUDIT", "CONFIG_DEBUG_INFO_DWARF4", "CONFIG_KALLSYMS", "CONFIG_HIGHMEM4G"} {
		if bytes.Contains(dot, []byte("\n"+off+"=y")) {
			t.Errorf("the configuration has %s on", off)
		}
	}
	// 9p without the network file systems menu: kconfig drops it silently.
	broken := []byte("# the root\nCONFIG_NET=y\n# its transport\nCONFIG_NET_9P=y\n# the file system\nCONFIG_9P_FS=y\n")
	opts, _ = ParseFragment(broken)
	err = b.configure(ctx, broken, opts)
	if err == nil || !strings.Contains(err.Error(), "CONFIG_9P_FS=y (line 6)") {
		t.Errorf("configure with an unmet dependency = %v; want an error naming CONFIG_9P_FS", err)
	}
}

// The whole build (10-20 minutes on a loaded 2-core machine) only when
// asked for: PGWASM_TEST_KERNEL_BUILD=1. The image build runs it anyway.
func TestBuildRealKernel(t *testing.T) {
	if os.Getenv("PGWASM_TEST_KERNEL_BUILD") != "1" {
		t.Skip("set PGWASM_TEST_KERNEL_BUILD=1 to compile the kernel (10-20 minutes)")
	}
	src := sourceDeb(t)
	ctx := context.Background()
	cfg := Config{CacheDir: t.TempDir()}
	res, err := Build(ctx, cfg, src, kernel.Config)
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(res.BzImage)
	if err != nil {
		t.Fatal(err)
	}
	// The x86 boot protocol's header: "HdrS" at 0x202, then the version.
	if len(img) < 0x210 || string(img[0x202:0x206]) != "HdrS" {
		t.Fatalf("%s is no bzImage", res.BzImage)
	}
	verOff := int(binary.LittleEndian.Uint16(img[0x20e:])) + 0x200
	if verOff >= len(img) || !bytes.Contains(img[verOff:min(verOff+128, len(img))], []byte("(pgwasm@pgwasm) #1")) {
		t.Errorf("the kernel's version string does not carry the fixed build identity")
	}
	again, err := Build(ctx, cfg, src, kernel.Config)
	if err != nil || !again.CacheHit || again.BzImageSHA256 != res.BzImageSHA256 {
		t.Errorf("second Build = %+v, %v; want a cache hit with the same bzImage", again, err)
	}
}

// A kept tree is reused unless the build in it did not finish; trees of
// other keys go. No source package is given, so a tree that is not reused
// fails with "not downloaded" instead of unpacking.
func TestPrepareTreeReusesOnlyFinishedTrees(t *testing.T) {
	cache := t.TempDir()
	key := strings.Repeat("b", 64)
	work := filepath.Join(cache, "tree-"+key[:16])
	src := filepath.Join(work, "linux-source-6.1")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "Makefile"), []byte("# kbuild\n"), 0o644)
	other := filepath.Join(cache, "tree-"+strings.Repeat("c", 16))
	os.MkdirAll(other, 0o755)
	pkg := deb.Package{Package: manifest.Package{Name: "linux-source-6.1", Version: "6.1.176-1"}}

	gotWork, tree, reused, err := prepareTree(context.Background(), cache, pkg, key)
	if err != nil || !reused || gotWork != work || tree != src {
		t.Fatalf("prepareTree of a finished tree = %q, %q, %v, %v; want %q, %q, reused", gotWork, tree, reused, err, work, src)
	}
	if _, err := os.Stat(other); err == nil {
		t.Error("the tree of another key is still there")
	}
	// The mark prepareTree left is what an interrupted build leaves.
	_, _, reused, err = prepareTree(context.Background(), cache, pkg, key)
	if reused || err == nil || !strings.Contains(err.Error(), "not downloaded") {
		t.Errorf("prepareTree of an unfinished tree = reused %v, %v; want a fresh unpack (here: not downloaded)", reused, err)
	}
}
