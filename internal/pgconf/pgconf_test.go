package pgconf

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/hostpg"
)

func TestConfFileHasEverySettingOnce(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Settings() {
		if seen[s.Name] {
			t.Errorf("setting %s appears twice", s.Name)
		}
		seen[s.Name] = true
		if s.Why == "" {
			t.Errorf("setting %s has no reason", s.Name)
		}
	}
	for _, want := range []string{"wal_level = logical", "ssl = on", "listen_addresses = '*'", "password_encryption = 'scram-sha-256'"} {
		if !strings.Contains(ConfFile(), want+"\n") {
			t.Errorf("ConfFile() lacks %q", want)
		}
	}
}

func TestCertIsDeterministicAndValid(t *testing.T) {
	c1, k1, err := Cert([]byte("seed"), []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	c2, k2, _ := Cert([]byte("seed"), []string{"localhost"})
	c3, _, _ := Cert([]byte("other"), []string{"localhost"})
	if !bytes.Equal(c1, c2) || !bytes.Equal(k1, k2) {
		t.Fatal("same seed gave different certificates")
	}
	if bytes.Equal(c1, c3) {
		t.Fatal("different seeds gave the same certificate")
	}
	block, _ := pem.Decode(c1)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("public key is %T, want ECDSA", cert.PublicKey)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("self-signature does not verify: %v", err)
	}
}

// TestRealServerAcceptsConfig starts Debian's PostgreSQL on loopback with the
// generated settings, pg_hba.conf and Ed25519 certificate, and checks what a
// client sees: TLS works, logical WAL is on, and network logins need the
// SCRAM password. The VM runs PostgreSQL 17; the host has 15, which knows
// every setting used here.
func TestRealServerAcceptsConfig(t *testing.T) {
	if err := hostpg.Check(""); err != nil {
		t.Skip(err)
	}
	cert, key, err := Cert([]byte("test"), []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := hostpg.Start(ctx, hostpg.Options{
		InitdbArgs: InitdbArgs(),
		DataFiles: map[string][]byte{
			// The pgwasm module is built for the image's i386 server only;
			// the VM tests load it (TestSavedSessionsRandom).
			"pgwasm.conf": []byte(ConfFile() + "shared_preload_libraries = ''\n"),
			"pg_hba.conf": []byte(HBA()), "server.crt": cert, "server.key": key,
		},
		Conf: "include = 'pgwasm.conf'\n",
	})
	if err != nil {
		t.Fatalf("server did not start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(context.Background()); err != nil {
			t.Log(err)
		}
		if err := srv.Remove(); err != nil {
			t.Error(err)
		}
	})
	dir, port := srv.Dir, srv.Port

	local := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", dir, port)
	if got := psql(t, local, "show wal_level"); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
	psql(t, local, "alter role postgres password 'sekret'")
	tcp := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", port)
	if got := psql(t, tcp+" password=sekret", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"); got != "t" {
		t.Errorf("TLS over the network: ssl = %q, want t", got)
	}
	out, err := exec.Command("psql", "-XAtc", "select 1", tcp+" password=wrong").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "password authentication failed") {
		t.Errorf("wrong password: err=%v out=%s; want an authentication failure", err, out)
	}
}

func psql(t *testing.T, conn, sql string) string {
	t.Helper()
	out, err := exec.Command("psql", "-XAtc", sql, conn).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v: %s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}
