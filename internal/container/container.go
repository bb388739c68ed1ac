// Package container builds the OCI image of `pgwasm serve` without a
// container engine: a static pgwasm binary and the VM image files, as two
// layers on an empty base, written as an OCI image layout directory
// (docs/deploy.md, "The container image").
//
// The result is reproducible: the same binary and VM image give the same
// digest. Every timestamp is the Unix epoch, entries are in lexical order,
// owners are 0:0 with no names, and modes are normalized (0755 for
// directories and executables, 0644 for other files), so nothing of the
// build host (its clock, its users, its umask) reaches the image.
package container

import (
	"archive/tar"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/pgwasm/pgwasm/internal/manifest"
)

// Where things are inside the image, and who runs them.
const (
	// Entrypoint is the pgwasm binary.
	Entrypoint = "/usr/local/bin/pgwasm"
	// ImageDir holds the VM image (kernel, 9p tree, snapshots); PGWASM_IMAGE
	// points serve at it.
	ImageDir = "/image"
	// User is numeric so that Kubernetes' runAsNonRoot can verify it
	// without an /etc/passwd lookup; 65532 is the usual "nonroot" id.
	User = "65532:65532"
	// HTTPPort and SNIPort are serve's ports in the cluster configuration
	// (deploy/kubernetes/pgwasm.yaml).
	HTTPPort = "8080/tcp"
	SNIPort  = "5433/tcp"
)

// epoch is every timestamp in the image: the build time would make each
// build a new digest.
var epoch = time.Unix(0, 0).UTC()

// Options name the inputs.
type Options struct {
	// Binary is a static Linux pgwasm executable (CGO_ENABLED=0); its ELF
	// machine gives the image's architecture.
	Binary string
	// VMImage is the VM image directory (build/image), baked in at ImageDir.
	VMImage string
}

// Build returns the image for opts. Layers read their files when the image
// is written, so the inputs must not change until then.
func Build(opts Options) (v1.Image, error) {
	arch, err := staticArch(opts.Binary)
	if err != nil {
		return nil, err
	}
	manifestJSON, err := os.ReadFile(filepath.Join(opts.VMImage, manifest.FileName))
	if err != nil {
		return nil, fmt.Errorf("VM image %s (want a `pgwasm image build` output): %w", opts.VMImage, err)
	}
	sum := sha256.Sum256(manifestJSON)
	labels := map[string]string{
		"org.opencontainers.image.title":       "pgwasm",
		"org.opencontainers.image.description": "pgwasm serve: PostgreSQL in a browser VM, its relay and tunnel",
		"org.opencontainers.image.source":      "https://github.com/pgwasm/pgwasm",
		// Which VM image is baked in: replicas that move sessions between
		// them must serve the same one.
		"io.pgwasm.vm-image.manifest-sha256": hex.EncodeToString(sum[:]),
	}
	if rev := revision(opts.Binary); rev != "" {
		labels["org.opencontainers.image.revision"] = rev
	}
	cfg := &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config: v1.Config{
			User:         User,
			Entrypoint:   []string{Entrypoint},
			Cmd:          []string{"serve"},
			Env:          []string{"PGWASM_IMAGE=" + ImageDir, "PGWASM_LISTEN=0.0.0.0:8080", "PGWASM_TUNNEL_SNI_LISTEN=0.0.0.0:5433"},
			WorkingDir:   "/",
			ExposedPorts: map[string]struct{}{HTTPPort: {}, SNIPort: {}},
			Labels:       labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	vmLayer, err := layer(func(tw *tar.Writer) error { return addTree(tw, opts.VMImage, ImageDir[1:]) })
	if err != nil {
		return nil, fmt.Errorf("VM image layer: %w", err)
	}
	binLayer, err := layer(func(tw *tar.Writer) error { return addBase(tw, opts.Binary) })
	if err != nil {
		return nil, fmt.Errorf("binary layer: %w", err)
	}
	// The VM image first: it changes less often than the binary, and a
	// registry that already has it takes only the small layer on a push.
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: vmLayer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "pgwasm image container: VM image at " + ImageDir}},
		mutate.Addendum{Layer: binLayer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "pgwasm image container: " + Entrypoint + ", /etc/passwd, /tmp"}},
	)
	if err != nil {
		return nil, fmt.Errorf("append layers: %w", err)
	}
	return img, nil
}

// WriteLayout writes img as an OCI image layout in dir, tagged ref
// (org.opencontainers.image.ref.name), replacing an earlier layout there.
// It returns the image's manifest digest.
func WriteLayout(dir, ref string, img v1.Image) (v1.Hash, error) {
	if _, err := os.Stat(dir); err == nil {
		// Only ever remove what this function wrote before.
		if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
			return v1.Hash{}, fmt.Errorf("%s exists and is not an OCI image layout: not replacing it", dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return v1.Hash{}, fmt.Errorf("remove the old layout: %w", err)
		}
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image digest: %w", err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		return v1.Hash{}, fmt.Errorf("write the image into %s: %w", dir, err)
	}
	return digest, nil
}

// staticArch checks that bin is a statically linked Linux executable (the
// image has no C library) and returns its OCI architecture.
func staticArch(bin string) (string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("binary %s is dynamically linked: build it with CGO_ENABLED=0", bin)
		}
	}
	if f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		return "", fmt.Errorf("binary %s is not a Linux executable (%v)", bin, f.OSABI)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	}
	return "", fmt.Errorf("binary %s: machine %v not supported", bin, f.Machine)
}

// revision is the VCS revision go build stamped into bin, if any.
func revision(bin string) string {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return ""
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return ""
}

// layer makes an OCI layer whose uncompressed tar fill writes; fill runs
// again each time the layer is read (to digest it, then to write it), so
// nothing is held in memory.
func layer(fill func(*tar.Writer) error) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			err := fill(tw)
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}, tarball.WithMediaType(types.OCILayer))
}

// header is a tar header with nothing of the build host in it.
func header(name string, typ byte, mode int64, size int64) *tar.Header {
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     mode,
		Size:     size,
		ModTime:  epoch,
		Format:   tar.FormatPAX,
	}
}

// addBase writes the binary at Entrypoint, a passwd and group naming the
// user (for tools that look it up) and a world-writable /tmp.
func addBase(tw *tar.Writer, bin string) error {
	files := []struct {
		name string
		typ  byte
		mode int64
		body string
	}{
		{"etc/", tar.TypeDir, 0o755, ""},
		{"etc/group", tar.TypeReg, 0o644, "root:x:0:\nnonroot:x:65532:\n"},
		{"etc/passwd", tar.TypeReg, 0o644, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n"},
		{"tmp/", tar.TypeDir, 0o1777, ""},
		{"usr/", tar.TypeDir, 0o755, ""},
		{"usr/local/", tar.TypeDir, 0o755, ""},
		{"usr/local/bin/", tar.TypeDir, 0o755, ""},
	}
	for _, f := range files {
		if err := tw.WriteHeader(header(f.name, f.typ, f.mode, int64(len(f.body)))); err != nil {
			return err
		}
		if _, err := io.WriteString(tw, f.body); err != nil {
			return err
		}
	}
	return addFile(tw, bin, Entrypoint[1:], 0o755)
}

// addTree writes the directory src under name, in lexical order.
func addTree(tw *tar.Writer, src, name string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		dst := path.Join(name, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return tw.WriteHeader(header(dst+"/", tar.TypeDir, 0o755, 0))
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h := header(dst, tar.TypeSymlink, 0o777, 0)
			h.Linkname = target
			return tw.WriteHeader(h)
		case d.Type().IsRegular():
			mode := int64(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			return addFile(tw, p, dst, mode)
		}
		return fmt.Errorf("%s: %v files cannot go into the image", p, d.Type())
	})
}

func addFile(tw *tar.Writer, src, name string, mode int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(header(name, tar.TypeReg, mode, info.Size())); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if n != info.Size() {
		return errors.New(src + " changed while it was read")
	}
	return nil
}
