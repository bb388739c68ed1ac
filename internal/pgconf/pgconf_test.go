package pgconf

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/testkit"
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
	bin := hostPGBin(t)
	dir := t.TempDir()
	// t.TempDir's parent is private to root; the server runs as postgres.
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	chownPostgres(t, dir)
	runAs(t, append([]string{filepath.Join(bin, "initdb"), "-D", data, "--no-sync"}, InitdbArgs()...)...)
	cert, key, err := Cert([]byte("test"), []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	port := testkit.FreePort(t, "127.0.0.1")
	// The pgwasm module is built for the image's i386 server only; the VM
	// tests load it (TestSavedSessionsRandom).
	conf := ConfFile() + fmt.Sprintf("port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nshared_preload_libraries = ''\n", port, dir)
	for name, content := range map[string][]byte{"pgwasm.conf": []byte(conf), "pg_hba.conf": []byte(HBA()), "server.crt": cert, "server.key": key} {
		p := filepath.Join(data, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		chownPostgres(t, p)
	}
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("include = 'pgwasm.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("cannot include pgwasm.conf: %v", err)
	}
	if err := runAsErr(filepath.Join(bin, "pg_ctl"), "-D", data, "-l", filepath.Join(dir, "log"), "-w", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		t.Fatalf("server did not start: %v\n%s", err, log)
	}
	t.Cleanup(func() { runAs(t, filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "stop") })

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

func hostPGBin(t *testing.T) string {
	t.Helper()
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		t.Skip("Debian postgresql is not installed (make setup installs it)")
	}
	return filepath.Dir(matches[len(matches)-1])
}

func chownPostgres(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command("chown", "-R", "postgres:postgres", path).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
}

func runAs(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
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

func runAsErr(args ...string) error {
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}
