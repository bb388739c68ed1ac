package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/pgconf"
	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

func TestAddEntropyOp(t *testing.T) {
	env := &testEnv{}
	db := &fakeDB{}
	srv := newTestServer(t, db, env)
	srv.sys.reseedFile = filepath.Join(t.TempDir(), "pgwasm.reseed")
	if err := os.WriteFile(srv.sys.reseedFile, []byte{0, 0, 0, 0}, 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, srv)
	host := bytes.Repeat([]byte{0xa5}, 32)
	mustOK(t, a.call(map[string]any{"id": 1, "op": "add_entropy", "entropy": base64.StdEncoding.EncodeToString(host)}))
	if len(env.entropy) != 1 || !bytes.Equal(env.entropy[0], host) {
		t.Fatalf("entropy passed on = %x, want the 32 bytes sent", env.entropy)
	}
	// The sessions reseed through the module's counter; the restore waits
	// for no statement.
	if len(db.sqls) != 0 {
		t.Errorf("statements = %q, want none", db.sqls)
	}
	if got := readCounter(t, srv.sys.reseedFile); got != 1 {
		t.Errorf("generation counter = %d after one add_entropy, want 1", got)
	}
	for i, bad := range []any{nil, base64.StdEncoding.EncodeToString(make([]byte, 8)), base64.StdEncoding.EncodeToString(make([]byte, 5000))} {
		resp := a.call(map[string]any{"id": 2 + i, "op": "add_entropy", "entropy": bad})
		if resp["ok"] != false || !strings.Contains(fmt.Sprint(resp["error"]), "bytes of entropy") {
			t.Errorf("entropy %v: %v, want a refusal", bad, resp)
		}
	}
	if resp := a.call(map[string]any{"id": 9, "op": "add_entropy", "entropy": "not base64!"}); resp["ok"] != false || resp["id"] != float64(9) {
		t.Errorf("bad base64: %v, want a refusal with the request's id", resp)
	}
	if len(env.entropy) != 1 {
		t.Errorf("refused requests reached the kernel: %d calls", len(env.entropy))
	}
	if got := readCounter(t, srv.sys.reseedFile); got != 1 {
		t.Errorf("generation counter = %d after refused requests, want 1", got)
	}
}

// The real ioctls, on this machine's kernel (root only: CAP_SYS_ADMIN).
func TestAddEntropyKernel(t *testing.T) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	err := addEntropy(b)
	if errors.Is(err, syscall.EPERM) {
		t.Skipf("needs CAP_SYS_ADMIN: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// net_up replaces the image's TLS key: a real PostgreSQL serves the image's
// certificate before and the agent's new one after, on a new connection.
func TestNetUpRotatesTLS(t *testing.T) {
	pg := pgtest.Start(t)
	imageCert, imageKey, err := pgconf.Cert([]byte("the published image"), []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(pg.Data)
	if err != nil {
		t.Fatal(err)
	}
	owner := st.Sys().(*syscall.Stat_t)
	for name, data := range map[string][]byte{"server.crt": imageCert, "server.key": imageKey} {
		if err := writeOwned(filepath.Join(pg.Data, name), data, 0o600, int(owner.Uid), int(owner.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	// As in the image: the key pair in the data directory, where the agent
	// writes the new one (pgtest's own pair is elsewhere).
	f, err := os.OpenFile(filepath.Join(pg.Data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	db := newPGClient(agentConfig(pg), discardLog())
	t.Cleanup(db.Close)
	env := &testEnv{onRun: func(context.Context, []string, string, ...string) ([]byte, error) {
		return nil, nil // udhcpc: no lease, so net_up ends in an error after the rotation
	}}
	srv := newTestServer(t, db, env)
	a := startAgent(t, srv)
	mustOK(t, a.call(map[string]any{"id": 1, "op": "exec", "sql": "SELECT pg_reload_conf()"}))
	if got, want := waitCert(t, pg.Port, fingerprint(t, imageCert)), fingerprint(t, imageCert); got != want {
		t.Fatalf("before net_up the server sends %s, want the image's %s", got, want)
	}

	// With a lease: net_up answers with the new certificate's fingerprint.
	env.onRun = func(context.Context, []string, string, ...string) ([]byte, error) {
		return nil, os.WriteFile(filepath.Join(env.dir, "run", "network"), []byte("ip=10.0.2.15\nmask=24\n"), 0o644)
	}
	srv.sys.pgData = pg.Data
	resp := mustOK(t, a.call(map[string]any{"id": 2, "op": "net_up"}))
	net1, _ := resp["network"].(map[string]any)
	fp, _ := net1["tls_cert_sha256"].(string)
	if len(fp) != 64 || fp == fingerprint(t, imageCert) {
		t.Fatalf("net_up fingerprint = %q, want a new certificate's", fp)
	}
	if got := waitCert(t, pg.Port, fp); got != fp {
		t.Fatalf("after net_up the server sends %s, want %s", got, fp)
	}
	if st, err := os.Stat(filepath.Join(pg.Data, "server.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("server.key: %v, mode %v; want 0600", err, st.Mode().Perm())
	}

	// Each net_up draws another key.
	resp = mustOK(t, a.call(map[string]any{"id": 3, "op": "net_up"}))
	if fp2 := resp["network"].(map[string]any)["tls_cert_sha256"]; fp2 == fp {
		t.Errorf("a second net_up kept the certificate %s", fp)
	}
}

func fingerprint(t *testing.T, certPEM []byte) string {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// waitCert connects with an SSLRequest until the server sends want (the
// postmaster applies a reload asynchronously) or 10 s pass, and returns the
// last certificate's fingerprint.
func waitCert(t *testing.T, port int, want string) string {
	t.Helper()
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got = serverCert(t, port)
		if got == want {
			break
		}
	}
	return got
}

func serverCert(t *testing.T, port int) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := make([]byte, 8)
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], 80877103) // SSLRequest
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(c, answer); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q (%v), want S", answer, err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // only the certificate is looked at
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	sum := sha256.Sum256(tc.ConnectionState().PeerCertificates[0].Raw)
	return hex.EncodeToString(sum[:])
}
