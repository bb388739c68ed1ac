package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pgwasm/pgwasm/guest"
	"github.com/pgwasm/pgwasm/internal/image/cpio"
	"github.com/pgwasm/pgwasm/internal/image/deb"
	"github.com/pgwasm/pgwasm/internal/image/extbuild"
	"github.com/pgwasm/pgwasm/internal/image/kmod"
	"github.com/pgwasm/pgwasm/internal/image/ninep"
	"github.com/pgwasm/pgwasm/internal/image/rootfs"
	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/pgconf"
)

const (
	pgMajor = "17"
	pgBin   = "/usr/lib/postgresql/" + pgMajor + "/bin"
	pgData  = "/var/lib/postgresql/" + pgMajor + "/main"
	// postgresUID is fixed: file ownership in the 9p tree is part of the
	// image, and Debian's postinst (which picks a free system uid) never runs.
	postgresUID = 999
	// sourceDateEpoch is the mtime of every file in the 9p tree and the
	// initramfs (2025-01-01), for reproducible output.
	sourceDateEpoch = 1735689600
)

// initramfsModules are what the 9p root, the NICs and the agent's
// virtio-console channel need, in probe order; dependencies are added from
// the modules' own modinfo.
var initramfsModules = []string{"virtio_pci", "9pnet_virtio", "9p", "ne2k-pci", "virtio_net", "virtio_console"}

// agentChannels are the channels the guest agent answers on, the host's
// first choice first (docs/agent-protocol.md, "Channels"); the manifest
// lists them so a host knows whether to give v86 the virtio-console device.
var agentChannels = []string{manifest.ChannelVirtioConsole, manifest.ChannelSerial}

func guestHash() [32]byte {
	h := sha256.New()
	etc, _ := json.Marshal(etcFiles()) // map keys marshal sorted
	for _, b := range [][]byte{guest.InitramfsInit, guest.Init, guest.UdhcpcScript, guest.BuildStep, guest.ExtensionControl, guest.ExtensionSQL, []byte(pgconf.ConfFile()), []byte(pgconf.HBA()),
		[]byte(strings.Join(pgconf.InitdbArgs(), " ")), []byte(strings.Join(initramfsModules, " ")), []byte(strings.Join(agentChannels, " ")), etc, []byte(psqlRC)} {
		s := sha256.Sum256(b)
		h.Write(s[:])
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// etcFiles are the /etc files dpkg's maintainer scripts and base-files would
// have written. They are part of the cache key.
func etcFiles() map[string]string {
	return map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n" +
			fmt.Sprintf("postgres:x:%d:%d:PostgreSQL administrator:/var/lib/postgresql:/bin/sh\n", postgresUID, postgresUID) +
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":         "root:x:0:\n" + fmt.Sprintf("postgres:x:%d:\n", postgresUID) + "ssl-cert:x:101:postgres\nnogroup:x:65534:\n",
		"etc/shadow":        "root:*:19000:0:99999:7:::\npostgres:*:19000:0:99999:7:::\n",
		"etc/hostname":      "pgwasm\n",
		"etc/hosts":         "127.0.0.1\tlocalhost pgwasm\n::1\tlocalhost ip6-localhost\n",
		"etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
		"etc/resolv.conf":   "# written by the guest agent when the network comes up\n",
		// tzdata's postinst would write these and the /etc/localtime link
		// (configureRoot): without it, /usr/share/zoneinfo/localtime
		// dangles and pg_timezone_names fails.
		"etc/timezone":   "Etc/UTC\n",
		"etc/os-release": "PRETTY_NAME=\"pgwasm (Debian packages)\"\nNAME=pgwasm\nID=pgwasm\nID_LIKE=debian\n",
		"etc/profile":    "export PATH=" + pgBin + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\nexport PAGER=cat PGDATA=" + pgData + " LANG=C.UTF-8\n",
	}
}

const psqlRC = "\\set HISTCONTROL ignorespace\n"

// assemble builds everything into staged, using work for scratch space.
func assemble(ctx context.Context, cfg Config, in *inputs, agent []byte, work, staged, clusterKey string) (*manifest.Image, error) {
	log := cfg.Logger
	meta := rootfs.Metas{}
	root := filepath.Join(work, "root")
	log.Info("unpacking packages", "count", len(in.root))
	for _, p := range in.root {
		if err := deb.Unpack(ctx, p.Path, root, meta); err != nil {
			return nil, err
		}
	}
	for _, e := range in.exts {
		log.Info("installing extension built from source", "package", e.Package, "version", e.Version)
		if err := extbuild.Install(e, root); err != nil {
			return nil, err
		}
	}
	if err := rootfs.MergeUsr(root, meta); err != nil {
		return nil, err
	}
	pruned, err := prune(root)
	if err != nil {
		return nil, err
	}
	log.Info("pruned the root", "bytes_removed", pruned)
	if err := configureRoot(root, agent, meta); err != nil {
		return nil, err
	}
	pgVersion, err := postgresVersion(in.root)
	if err != nil {
		return nil, err
	}

	m := &manifest.Image{
		Version: manifest.Version, Builder: BuilderVersion, Cmdline: cfg.Cmdline, NetDevice: cfg.NetDevice, NetMTU: netMTU(cfg.NetDevice), ACPI: localAPIC(cfg.Kernel),
		PostgresVersion: pgVersion, Packages: manifestPackages(in.root), KernelPackage: imageKernel(in).Package,
		Extensions:    extensionInfo(in.exts),
		AgentChannels: agentChannels,
		Reproducible:  "kernel, initrd, bios, vgabios, every 9p blob except the PostgreSQL cluster files under " + pgData,
	}
	if err := buildKernel(ctx, in, root, filepath.Join(cfg.CacheDir, "kernel"), staged, m); err != nil {
		return nil, err
	}
	if err := copyBIOS(ctx, in.bios, work, staged, m); err != nil {
		return nil, err
	}
	// The image's own programs (busybox, initdb) run only inside v86.
	if err := runInVM(ctx, cfg, root, staged, clusterKey, meta); err != nil {
		return nil, err
	}

	log.Info("writing the 9p tree")
	stats, err := ninep.Write(ctx, root, filepath.Join(staged, "9p"), ninep.Options{MTime: sourceDateEpoch, Meta: meta})
	if err != nil {
		return nil, fmt.Errorf("cannot write the 9p tree: %w", err)
	}
	for _, s := range stats.Skipped {
		log.Debug("left out of the 9p tree", "path", s.Path, "reason", s.Reason)
	}
	fsFile, err := describe(staged, filepath.Join("9p", ninep.IndexName))
	if err != nil {
		return nil, err
	}
	m.FS = manifest.FS{
		File: fsFile.File, BlobDir: filepath.Join("9p", ninep.BlobDir), SHA256: fsFile.SHA256,
		Files: stats.Files, Bytes: stats.Bytes, Blobs: stats.Blobs, BlobBytes: stats.BlobBytes, Compressed: stats.Compressed,
	}
	return m, nil
}

// pruneRules are removed from the root: nothing in the VM reads them. The
// 9p tree loads files lazily, so this is about image size and build time,
// not about what a visitor downloads.
var pruneRules = []string{
	"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/bug",
	"usr/share/locale", "usr/share/i18n", "usr/share/gcc", "usr/share/gdb", "usr/share/menu",
	"usr/share/perl", "usr/share/perl5", "usr/lib/i386-linux-gnu/perl", "usr/lib/i386-linux-gnu/perl-base",
	"usr/lib/i386-linux-gnu/perl5", "usr/share/postgresql-common", "usr/share/debconf",
	"usr/lib/systemd", "lib/systemd", "etc/systemd", "etc/init.d", "etc/cron.d", "etc/cron.daily", "etc/logrotate.d",
	"usr/include", "usr/lib/i386-linux-gnu/pkgconfig",
	"usr/lib/postgresql/17/lib/bitcode", "usr/lib/postgresql/17/lib/llvmjit.so", "usr/lib/postgresql/17/lib/llvmjit_types.bc",
	"usr/share/postgresql/17/man",
}

// prunePatterns remove the LLVM JIT's libraries (jit = off) and perl.
var prunePatterns = []string{
	"usr/lib/i386-linux-gnu/libLLVM*", "usr/lib/i386-linux-gnu/libz3.so*", "usr/lib/llvm-*",
	"usr/bin/perl*", "usr/lib/i386-linux-gnu/libperl.so*",
}

func prune(root string) (int64, error) {
	var removed int64
	paths := append([]string{}, pruneRules...)
	for _, p := range prunePatterns {
		matches, err := filepath.Glob(filepath.Join(root, p))
		if err != nil {
			return 0, err
		}
		for _, m := range matches {
			rel, _ := filepath.Rel(root, m)
			paths = append(paths, rel)
		}
	}
	for _, p := range paths {
		full := filepath.Join(root, p)
		// The sum is for the build log: a path no package installed counts
		// nothing, and the callback never fails the walk.
		_ = filepath.WalkDir(full, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if info, err := d.Info(); err == nil {
					removed += info.Size()
				}
			}
			return nil
		})
		if err := os.RemoveAll(full); err != nil {
			return 0, fmt.Errorf("cannot prune /%s: %w", p, err)
		}
	}
	return removed, nil
}

// configureRoot adds what dpkg's maintainer scripts and base-files would
// have: users, /etc files, PostgreSQL client links, and the guest init and
// agent. Owners and special modes go into meta: the build runs as an
// ordinary user.
func configureRoot(root string, agent []byte, meta rootfs.Metas) error {
	// put writes a file of ours, replacing any package's file and its meta.
	put := func(name string, data []byte, mode os.FileMode) error {
		delete(meta, name)
		os.Remove(filepath.Join(root, name))
		return writeFile(filepath.Join(root, name), data, mode)
	}
	for name, content := range etcFiles() {
		if err := put(name, []byte(content), 0o644); err != nil {
			return err
		}
	}
	// psql in the page's terminal: the page sets the terminal size with a
	// line that starts with a space, which this keeps out of the history.
	if err := put("var/lib/postgresql/.psqlrc", []byte(psqlRC), 0o644); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(root, "etc/shadow"), 0o640); err != nil {
		return err
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "root", "var/tmp", "var/log", "usr/lib/pgwasm", "etc/ssl/certs"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "var/tmp"} {
		meta[d] = rootfs.Meta{Mode: 0o777 | fs.ModeSticky}
	}
	os.Remove(filepath.Join(root, "etc/localtime"))
	if err := os.Symlink("/usr/share/zoneinfo/Etc/UTC", filepath.Join(root, "etc/localtime")); err != nil {
		return err
	}
	os.RemoveAll(filepath.Join(root, "var/run"))
	if err := os.Symlink("/run", filepath.Join(root, "var/run")); err != nil {
		return err
	}
	for _, d := range []string{"var/lib/postgresql", "var/log/postgresql"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
		meta[d] = rootfs.Meta{UID: postgresUID, GID: postgresUID, Mode: 0o755}
	}
	// Debian's /usr/bin/psql and friends are links to a perl wrapper that
	// picks a cluster; the VM has one cluster and no perl.
	bins, err := os.ReadDir(filepath.Join(root, pgBin))
	if err != nil {
		return fmt.Errorf("PostgreSQL %s binaries are missing: %w", pgMajor, err)
	}
	for _, b := range bins {
		link := filepath.Join(root, "usr/bin", b.Name())
		os.Remove(link)
		if err := os.Symlink(filepath.Join(pgBin, b.Name()), link); err != nil {
			return err
		}
	}
	if err := writeCABundle(root); err != nil {
		return err
	}
	for name, f := range map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"usr/sbin/init":                {guest.Init, 0o755},
		"usr/lib/pgwasm/agent":         {agent, 0o755},
		"usr/lib/pgwasm/udhcpc.script": {guest.UdhcpcScript, 0o755},
		"usr/lib/pgwasm/memory":        {guest.Memory, 0o644},
		// The VM step creates the extension in every database.
		"usr/share/postgresql/17/extension/pgwasm.control":  {guest.ExtensionControl, 0o644},
		"usr/share/postgresql/17/extension/pgwasm--1.0.sql": {guest.ExtensionSQL, 0o644},
	} {
		if err := put(name, f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeCABundle does what update-ca-certificates would: one PEM bundle, so
// psql and pg_dump in the VM can verify remote servers (sslrootcert=system).
func writeCABundle(root string) error {
	var bundle bytes.Buffer
	var certs []string
	filepath.WalkDir(filepath.Join(root, "usr/share/ca-certificates"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".crt") {
			certs = append(certs, p)
		}
		return nil
	})
	sort.Strings(certs)
	for _, c := range certs {
		b, err := os.ReadFile(c)
		if err != nil {
			return err
		}
		bundle.Write(bytes.TrimSpace(b))
		bundle.WriteByte('\n')
	}
	return writeFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"), bundle.Bytes(), 0o644)
}

// postgresVersion is the upstream version of the postgresql-17 package,
// e.g. "17.11" from "17.11-0+deb13u1".
func postgresVersion(pkgs []deb.Package) (string, error) {
	for _, p := range pkgs {
		if p.Name == "postgresql-"+pgMajor {
			v := p.Version
			if i := strings.Index(v, ":"); i >= 0 {
				v = v[i+1:]
			}
			v, _, _ = strings.Cut(v, "-")
			return v, nil
		}
	}
	return "", fmt.Errorf("postgresql-%s is not among the packages", pgMajor)
}

// buildKernel copies the kernel and writes the initramfs: busybox, the
// initramfs init, and the modules the 9p root and the NICs need. Our kernel
// (in.kernelBuild) has those built in, so its initramfs has no modules and
// an empty modules.order: guest/initramfs-init is the same for both.
func buildKernel(ctx context.Context, in *inputs, root, cacheDir, staged string, m *manifest.Image) error {
	bzImage := ""
	var modules []cpio.Entry
	if kb := in.kernelBuild; kb != nil {
		bzImage = kb.BzImage
		// The init reads the list in a redirection, which must open.
		modules = []cpio.Entry{cpio.File("lib/modules/modules.order", 0o644, nil)}
		m.KernelBuild = &manifest.KernelBuild{Key: kb.Key, ConfigSHA256: kb.ConfigSHA256, Compiler: kb.Compiler.Ident, HostCompiler: kb.HostCompiler}
	} else {
		var err error
		if bzImage, modules, err = debianKernel(ctx, in.kernel, cacheDir, m); err != nil {
			return err
		}
	}
	if err := copyFile(bzImage, filepath.Join(staged, "bzImage")); err != nil {
		return err
	}
	busybox, err := os.ReadFile(filepath.Join(root, "usr/bin/busybox"))
	if err != nil {
		return fmt.Errorf("busybox-static is missing from the root: %w", err)
	}
	entries := []cpio.Entry{
		cpio.Dir("dev", 0o755), cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.Dir("proc", 0o755), cpio.Dir("newroot", 0o755),
		cpio.File("bin/busybox", 0o755, busybox), cpio.Symlink("bin/sh", "busybox"),
		cpio.File("init", 0o755, guest.InitramfsInit),
	}
	entries = append(entries, modules...)
	var buf bytes.Buffer
	if err := cpio.Write(&buf, entries, cpio.Options{MTime: sourceDateEpoch, Gzip: true}); err != nil {
		return fmt.Errorf("cannot write the initramfs: %w", err)
	}
	if err := writeFile(filepath.Join(staged, "initrd.img"), buf.Bytes(), 0o644); err != nil {
		return err
	}
	if m.Kernel, err = describe(staged, "bzImage"); err != nil {
		return err
	}
	m.Initrd, err = describe(staged, "initrd.img")
	return err
}

// modulesDirs are the lib/modules/<version> directories of an unpacked
// Debian kernel package (usr/lib/modules in a merged-/usr package).
func modulesDirs(kdir string) []string {
	mods, _ := filepath.Glob(filepath.Join(kdir, "lib", "modules", "*"))
	if len(mods) == 0 {
		mods, _ = filepath.Glob(filepath.Join(kdir, "usr", "lib", "modules", "*"))
	}
	return mods
}

// debianKernel returns the Debian kernel package's vmlinuz and the
// initramfs entries of the modules the initramfs loads, with their
// modules.order (our kernel's initramfs has an empty one).
func debianKernel(ctx context.Context, kpkg deb.Package, cacheDir string, m *manifest.Image) (string, []cpio.Entry, error) {
	kdir, err := kernelTree(ctx, kpkg, cacheDir)
	if err != nil {
		return "", nil, err
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
	mods := modulesDirs(kdir)
	if len(vmlinuz) != 1 || len(mods) != 1 {
		return "", nil, fmt.Errorf("kernel package %s: want one vmlinuz and one modules directory, found %d and %d", kpkg.Name, len(vmlinuz), len(mods))
	}
	modules, err := kmod.Resolve(mods[0], initramfsModules)
	if err != nil {
		return "", nil, err
	}
	var entries []cpio.Entry
	var order []string
	for _, mod := range modules {
		data, err := os.ReadFile(filepath.Join(mods[0], mod.Path))
		if err != nil {
			return "", nil, err
		}
		name := mod.Name + ".ko"
		entries = append(entries, cpio.File("lib/modules/"+name, 0o644, data))
		order = append(order, name)
		m.Modules = append(m.Modules, mod.Name)
	}
	entries = append(entries, cpio.File("lib/modules/modules.order", 0o644, []byte(strings.Join(order, "\n")+"\n")))
	return vmlinuz[0], entries, nil
}

// kernelTree returns the kernel package unpacked under cacheDir, reusing an
// earlier unpack only while its files match the checksums taken then.
func kernelTree(ctx context.Context, kpkg deb.Package, cacheDir string) (string, error) {
	kdir := filepath.Join(cacheDir, kpkg.Name+"_"+kpkg.Version)
	complete := filepath.Join(kdir, ".complete")
	if want, err := os.ReadFile(complete); err == nil {
		if got, err := rootfs.Sums(kdir); err == nil && got == string(want) {
			return kdir, nil
		}
	}
	if err := os.RemoveAll(kdir); err != nil {
		return "", fmt.Errorf("cannot clear the kernel cache: %w", err)
	}
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return "", fmt.Errorf("cannot create the kernel cache: %w", err)
	}
	if err := deb.Unpack(ctx, kpkg.Path, kdir, nil); err != nil {
		return "", err
	}
	sums, err := rootfs.Sums(kdir)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(complete, []byte(sums), 0o644); err != nil {
		return "", fmt.Errorf("cannot write the kernel cache: %w", err)
	}
	return kdir, nil
}

// copyBIOS takes SeaBIOS and its VGA BIOS from Debian's seabios package:
// the v86 npm package ships no BIOS.
func copyBIOS(ctx context.Context, p deb.Package, work, staged string, m *manifest.Image) error {
	dir := filepath.Join(work, "seabios")
	if err := deb.Unpack(ctx, p.Path, dir, nil); err != nil {
		return err
	}
	var err error
	for _, c := range []struct {
		from, to string
		dst      *manifest.File
	}{{"bios.bin", "bios.bin", &m.BIOS}, {"vgabios-stdvga.bin", "vgabios.bin", &m.VGABIOS}} {
		if err := copyFile(filepath.Join(dir, "usr/share/seabios", c.from), filepath.Join(staged, c.to)); err != nil {
			return fmt.Errorf("seabios package lacks %s: %w", c.from, err)
		}
		if *c.dst, err = describe(staged, c.to); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return os.Chmod(path, mode)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return writeFile(to, b, 0o644)
}
