// Package guest holds the files that go into the VM unchanged: the
// initramfs init and the guest init. The guest agent is a separate program
// in guest/agent, built for linux/386.
package guest

import _ "embed"

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
