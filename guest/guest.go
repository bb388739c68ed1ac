// Package guest holds the files that go into the VM unchanged: the
// initramfs init, the guest init, and the image build's step run inside the
// VM. The guest agent is a separate program in guest/agent, built for
// linux/386.
package guest

import (
	"embed"
	"io/fs"
)

// InitramfsInit is /init in the initramfs.
//
//go:embed initramfs-init
var InitramfsInit []byte

// Init is /sbin/init in the root file system.
//
//go:embed init
var Init []byte

// UdhcpcScript configures eth0 from busybox udhcpc's lease (the guest agent
// runs udhcpc with it on net_up).
//
//go:embed udhcpc.script
var UdhcpcScript []byte

// BuildStep runs as PID 1 in the one boot of the image at build time
// (pgwasm.build=1): initdb, its warm-up and busybox's applet list, so the
// image's i386 programs never run on the build host. guest/init execs it;
// the image build stages it at /usr/lib/pgwasm/build/run and removes it.
//
//go:embed build-step
var BuildStep []byte

// Memory sets the overcommit ratio and max_connections by memory size;
// guest/init sources it at /usr/lib/pgwasm/memory. The image build's VM step
// does not use it, so changing it does not run initdb again.
//
//go:embed memory
var Memory []byte

// ExtensionControl and ExtensionSQL are the pgwasm extension, which the image
// build creates in every database of the cluster (pgwasm--1.0.sql says why).
// Its C module, preloaded by the server, is ExtensionModule.
//
//go:embed pgwasm.control
var ExtensionControl []byte

//go:embed pgwasm--1.0.sql
var ExtensionSQL []byte

//go:embed pgwasm-ext
var extensionModule embed.FS

// ExtensionModule is the source of the pgwasm module (pgwasm-ext/pgwasm.c,
// a PGXS Makefile), which reseeds the random generators of sessions saved
// in a snapshot after a restore. The image build cross-compiles it with
// internal/image/extbuild and preloads it (shared_preload_libraries).
func ExtensionModule() fs.FS {
	sub, err := fs.Sub(extensionModule, "pgwasm-ext")
	if err != nil {
		panic(err) // the directory is embedded above
	}
	return sub
}
