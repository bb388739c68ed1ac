// Package pgconf generates the PostgreSQL configuration baked into the image:
// server settings for a small, slow, single-CPU machine whose disk lives in
// browser memory, client authentication, and the server's TLS certificate.
package pgconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"
)

// Setting is one postgresql.conf line with the reason it is there.
type Setting struct {
	Name, Value, Why string
}

// Settings are the server settings for the VM. Each carries its reason; the
// rendered file repeats them so the choices are visible inside the VM too.
func Settings() []Setting {
	return []Setting{
		{"listen_addresses", "'*'", "the relay's inbound tunnel reaches the VM over its NIC"},
		{"port", "5432", "the tunnel dials this port inside the VM"},
		{"unix_socket_directories", "'/var/run/postgresql'", "where psql, the guest agent and Debian's libpq look"},
		{"max_connections", "20", "the build's warm-up only: guest/init starts the server with -c max_connections=N chosen by the VM's memory size (docs/vm.md, \"Memory\")"},
		{"superuser_reserved_connections", "2", "keeps the console usable when tunnel clients fill the slots"},
		{"authentication_timeout", "30s", "a backend waiting for a login holds a slot and memory; the tunnel's own deadline (docs/serve.md) cannot see inside TLS, PostgreSQL can; 30 s because TLS and SCRAM in a loaded emulator can take over 10 s"},
		{"shared_buffers", "16MB", "small: touched buffers land in every state snapshot and RAM is 128 MB at the least"},
		{"work_mem", "2MB", "per sort/hash node; keeps a few concurrent queries inside 128 MB"},
		{"maintenance_work_mem", "16MB", "index builds during dump restores, without starving the VM"},
		{"wal_level", "logical", "logical replication out of the browser (publications) and replication slots"},
		{"max_wal_senders", "4", "a few replication or pg_basebackup clients"},
		{"max_replication_slots", "4", "one per subscriber, with headroom"},
		{"max_worker_processes", "4", "logical replication workers; one CPU, so no more"},
		{"max_logical_replication_workers", "2", "one subscription apply worker plus a table sync"},
		{"max_sync_workers_per_subscription", "1", "one CPU: parallel table sync would only contend"},
		{"max_parallel_workers_per_gather", "0", "v86 emulates one CPU: parallel query only adds overhead"},
		{"max_parallel_workers", "0", "as above"},
		{"max_parallel_maintenance_workers", "0", "as above"},
		{"ssl", "on", "tunnel clients get TLS end to end; the relay never sees plaintext"},
		{"ssl_cert_file", "'server.crt'", "generated at image build"},
		{"ssl_key_file", "'server.key'", "generated at image build"},
		{"password_encryption", "'scram-sha-256'", "network logins use SCRAM"},
		{"fsync", "off", "the disk is browser memory, saved only as a whole VM snapshot together with RAM, so there is no crash between them to survive; fsync through 9p only costs time"},
		{"synchronous_commit", "off", "as above"},
		{"full_page_writes", "off", "torn pages need a power loss the VM cannot have apart from its memory"},
		{"wal_compression", "off", "CPU is the scarce resource in an emulator, not WAL volume"},
		{"min_wal_size", "2MB", "the image uses 1 MB WAL segments: WAL that would land in every snapshot stays small"},
		{"max_wal_size", "16MB", "bounds the WAL crash recovery replays (with 32MB and 30min a recovery took 2.5 min in the emulator); a dump restore still checkpoints rarely"},
		{"checkpoint_timeout", "5min", "as above; an idle server skips the timed checkpoint, so this costs nothing while nothing is written"},
		{"bgwriter_delay", "10s", "fewer wakeups: an idle VM should not spend emulated CPU"},
		{"wal_writer_delay", "1s", "as above"},
		{"autovacuum_naptime", "5min", "as above; autovacuum still runs"},
		{"autovacuum_max_workers", "1", "one CPU"},
		{"jit", "off", "the LLVM JIT is pruned from the image (size) and would be slow to start in an emulator"},
		{"huge_pages", "off", "not available in the VM"},
		{"dynamic_shared_memory_type", "posix", "the guest mounts a tmpfs at /dev/shm"},
		{"timezone", "'UTC'", "the guest has no local time zone; clients set their own"},
		{"log_timezone", "'UTC'", "as above"},
		{"log_destination", "'stderr'", "the init redirects stderr to /var/log/postgresql/postgresql.log"},
		{"log_min_messages", "warning", "keep the log and its writes small"},
		{"log_connections", "on", "network logins through the tunnel are worth seeing"},
		{"track_io_timing", "off", "clock reads are slow in the emulator"},
		{"shared_preload_libraries", "'pgwasm'", "the pgwasm module (guest/pgwasm-ext) reseeds the random generators of sessions saved in a snapshot after each restore; it must be mapped before the server forks"},
		{"pgwasm.reseed_file", "'" + ReseedFile + "'", "the counter the guest agent bumps after add_entropy; on a tmpfs, so the server and the agent share its page"},
	}
}

// ReseedFile holds the pgwasm module's generation counter (a native-endian
// uint32): the server maps it at start, and the guest agent adds one after
// every add_entropy, upon which every session reseeds before its next
// statement. /run/postgresql is a tmpfs owned by postgres (guest/init).
const ReseedFile = "/run/postgresql/pgwasm.reseed"

// ConfFile renders the settings as a file included from postgresql.conf.
func ConfFile() string {
	var b strings.Builder
	b.WriteString("# pgwasm settings for a small emulated machine (written by pgwasm image build).\n")
	for _, s := range Settings() {
		fmt.Fprintf(&b, "# %s\n%s = %s\n", s.Why, s.Name, s.Value)
	}
	return b.String()
}

// HBA is pg_hba.conf: the console and the guest agent (Unix socket) are
// trusted; anything over the network, replication included, needs a SCRAM
// password, which the page sets when it starts the network. Until then the
// postgres role has no password and network logins fail.
func HBA() string {
	rules := [][4]string{
		{"local", "all", "all", "trust"},
		{"local", "replication", "all", "trust"},
		{"host", "all", "all", "0.0.0.0/0 scram-sha-256"},
		{"host", "all", "all", "::/0 scram-sha-256"},
		{"host", "replication", "all", "0.0.0.0/0 scram-sha-256"},
		{"host", "replication", "all", "::/0 scram-sha-256"},
	}
	var b strings.Builder
	b.WriteString("# pgwasm: trust on the Unix socket (console, guest agent); SCRAM over the network.\n")
	b.WriteString("# TYPE      DATABASE     USER  ADDRESS METHOD\n")
	for _, r := range rules {
		fmt.Fprintf(&b, "%-11s %-12s %-5s %s\n", r[0], r[1], r[2], r[3])
	}
	return b.String()
}

// Cert makes the server's self-signed TLS certificate and key (PEM) from a
// seed: ECDSA P-256 with the key derived from the seed and RFC 6979
// deterministic signatures (nil rand), so the same seed gives the same bytes
// and the image build stays reproducible. Not Ed25519: libpq's SCRAM channel
// binding needs a certificate signature digest, and Ed25519 has none ("could
// not find digest for NID UNDEF"). The key is only as secret as the image:
// anyone with the published image has it (see docs/image.md).
func Cert(seed []byte, hosts []string) (certPEM, keyPEM []byte, err error) {
	s := sha256.Sum256(append([]byte("pgwasm server key\x00"), seed...))
	// Any 32 bytes below the group order make a valid P-256 scalar; a sha256
	// is above it with probability 2^-32, so hash again until it fits.
	var key *ecdsa.PrivateKey
	for d := s; key == nil; d = sha256.Sum256(d[:]) {
		key, _ = ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	}
	hosts = append([]string(nil), hosts...)
	sort.Strings(hosts)
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(s[:16]),
		Subject:      pkix.Name{CommonName: "pgwasm"},
		NotBefore:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2045, 1, 1, 0, 0, 0, 0, time.UTC),
		// A CA bit lets clients pin this certificate as their root
		// (sslrootcert=..., sslmode=verify-ca).
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              hosts,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create TLS certificate: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot encode TLS key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// InitdbArgs are the initdb options the image's cluster is created with
// (valid for PostgreSQL 15 to 17). 1 MB WAL segments instead of 16 MB: a
// whole segment lands in every state snapshot.
func InitdbArgs() []string {
	return []string{"--wal-segsize=1", "--encoding=UTF8", "--locale=C.UTF-8", "--username=postgres", "--auth=trust"}
}
