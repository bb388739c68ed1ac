package extbuild

import (
	"bytes"
	"context"
	"debug/elf"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
)

// newTestConfig uses the real Debian archive through the host's apt
// configuration. PGWASM_TEST_APT_DIR and PGWASM_TEST_CACHE_DIR let repeated
// runs reuse package lists, downloads and the builder root.
func newTestConfig(t *testing.T) Config {
	t.Helper()
	if testing.Short() {
		t.Skip("downloads packages and compiles")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for chroot and a mount namespace")
	}
	for _, tool := range []string{"apt-get", "dpkg-deb", "dpkg-source", "unshare", "setarch"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
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
	f, err := elf.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS32 || f.Machine != elf.EM_386 || f.Type != elf.ET_DYN {
		t.Fatalf("vector.so is %v %v %v, want ELFCLASS32 EM_386 ET_DYN", f.Class, f.Machine, f.Type)
	}
	f.Close()
	st, _ := os.Stat(so)
	t.Logf("vector.so: %d bytes, %d .sql files", st.Size(), len(sqls))

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
	if _, err := exec.LookPath("objdump"); err == nil {
		dis, err := exec.Command("objdump", "-d", "--no-show-raw-insn", so).Output()
		if err != nil {
			t.Fatal(err)
		}
		// objdump without raw bytes prints "addr:\tmnemonic"; add a fake
		// byte column so the pattern (tested above) applies.
		text := regexp.MustCompile(`(?m)^(\s*[0-9a-f]+:)\t`).ReplaceAllString(string(dis), "$1\t00 \t")
		if m := forbidden.FindAllString(text, 5); len(m) > 0 {
			t.Errorf("vector.so has instructions the emulated CPU lacks: %q", m)
		}
	} else {
		t.Log("objdump not installed: instruction check skipped")
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

	if os.Getenv("PGWASM_TEST_NO_LOAD") == "" {
		loadInPostgres(ctx, t, cfg, res)
	}
}

// loadInPostgres unpacks the image's PostgreSQL 17 (i386) into a scratch
// root, installs the result, and runs CREATE EXTENSION vector and a distance
// query in a real server, in a chroot on the host.
func loadInPostgres(ctx context.Context, t *testing.T, cfg Config, res *Result) {
	t.Helper()
	pkgs, err := cfg.Apt.Resolve(ctx, []string{"postgresql-17", "dash", "coreutils"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Apt.Fetch(ctx, pkgs); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, p := range pkgs {
		if err := deb.Unpack(ctx, p.Path, root); err != nil {
			t.Fatal(err)
		}
	}
	if err := rootfs.MergeUsr(root); err != nil {
		t.Fatal(err)
	}
	if err := Install(res, root); err != nil {
		t.Fatal(err)
	}
	writeTree(t, root, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999::/tmp:/bin/sh\n",
		"etc/group":  "root:x:0:\npostgres:x:999:\n",
	})
	for _, d := range []string{"dev", "proc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "usr/bin/sh")); err != nil {
		if err := os.Symlink("dash", filepath.Join(root, "usr/bin/sh")); err != nil {
			t.Fatal(err)
		}
	}
	const bin = "/usr/lib/postgresql/17/bin"
	inner := `set -e
` + bin + `/initdb -D /tmp/data --no-sync -U postgres --auth=trust --locale-provider=builtin --builtin-locale=C.UTF-8 >/tmp/initdb.log
` + bin + `/pg_ctl -D /tmp/data -l /tmp/pg.log -o "-k /tmp -c listen_addresses=''" -w start >/dev/null
trap '` + bin + `/pg_ctl -D /tmp/data -m immediate stop >/dev/null' EXIT
` + bin + `/psql -X -q -h /tmp -U postgres -d postgres -Atc "CREATE EXTENSION vector" -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'" -c "SELECT '[1,2,3]'::vector <-> '[1,2,4]'" -c "CREATE TABLE items (id int, v vector(3)); INSERT INTO items SELECT i, ARRAY[i, i*2, i%7]::real[]::vector FROM generate_series(1, 2000) i; CREATE INDEX ON items USING hnsw (v vector_l2_ops); SET enable_seqscan = off; SELECT id FROM items ORDER BY v <-> '[10,20,3]' LIMIT 1"`
	outer := `set -e
mount --rbind /dev "$ROOT/dev"
mount -t proc proc "$ROOT/proc"
exec chroot --userspec=999:999 "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LC_ALL=C.UTF-8 /bin/sh -c "$INNER"`
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", "sh", "-c", outer)
	cmd.Env = append(os.Environ(), "ROOT="+root, "INNER="+inner)
	out, err := cmd.CombinedOutput()
	if err != nil {
		pglog, _ := os.ReadFile(filepath.Join(root, "tmp/pg.log"))
		t.Fatalf("PostgreSQL with vector: %v\n%s\nserver log:\n%s", err, out, pglog)
	}
	got := strings.Fields(string(out))
	want := []string{strings.SplitN(res.Version, "-", 2)[0], "1", "10"}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("psql printed %q, want extversion, distance, nearest id %q", got, want)
	}
	t.Logf("CREATE EXTENSION vector %s in i386 PostgreSQL 17: distance %s, hnsw nearest id %s", got[0], got[1], got[2])
}
