package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"github.com/pgwasm/pgwasm/internal/pgconf"
	"golang.org/x/sys/unix"
)

// Entropy from the host, in bytes (add_entropy).
const (
	minEntropy = 16
	maxEntropy = 4096
)

// addEntropy mixes the host's random bytes into the kernel's pool, credits
// them and reseeds the CRNG at once. Every VM restored from one snapshot
// starts with the same CRNG state; without this, tabs restored from the
// published state would draw the same "random" TLS keys, salts and nonces.
func addEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cannot open /dev/urandom: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b)+3)
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("cannot add entropy: %w", e)
	}
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("cannot reseed the kernel's random generator: %w", e)
	}
	return nil
}

// rotateTLS gives PostgreSQL a certificate and key made here, from the
// kernel's random generator (reseeded by the host's add_entropy), and
// reloads the server's configuration so new connections use them. The
// image's key is public (anyone with the image has it); this one never
// leaves the VM. It returns the SHA-256 of the new certificate (DER), which
// a client can compare or pin.
func (s *server) rotateTLS(ctx context.Context) (string, error) {
	dir := s.sys.pgData
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return "", fmt.Errorf("cannot draw a TLS key: %w", err)
	}
	certPEM, keyPEM, err := pgconf.Cert(seed, []string{"localhost", "pgwasm"})
	if err != nil {
		return "", err
	}
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("PostgreSQL data directory: %w", err)
	}
	owner, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "", errors.New("cannot tell who owns the PostgreSQL data directory")
	}
	// The key first: a reload between the two renames would pair the old
	// certificate with the new key, which PostgreSQL refuses (keeping the
	// old pair), and the next reload fixes it.
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"server.key", keyPEM, 0o600}, {"server.crt", certPEM, 0o644}} {
		if err := writeOwned(filepath.Join(dir, f.name), f.data, f.mode, int(owner.Uid), int(owner.Gid)); err != nil {
			return "", err
		}
	}
	if _, err := s.db.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return "", fmt.Errorf("cannot reload PostgreSQL's configuration: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:]), nil
}

// writeOwned replaces path atomically with a file of the given mode and
// owner (PostgreSQL refuses a key another user can read).
func writeOwned(path string, data []byte, mode os.FileMode, uid, gid int) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return nil
}
