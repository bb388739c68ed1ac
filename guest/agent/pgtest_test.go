package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pgwasm/pgwasm/internal/testkit"
)

// testPG is a throwaway PostgreSQL server owned by the postgres user, with
// its Unix socket in its own directory and TCP on loopback only.
type testPG struct {
	bin     string
	dir     string // data directory
	sockDir string
	port    int
}

func pgBinDir() string {
	if d := os.Getenv("PGWASM_PG_BIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// startPG runs initdb and starts a server. The tests need root (to run the
// server as postgres) and Debian's PostgreSQL; without them they skip.
func startPG(t *testing.T) *testPG {
	t.Helper()
	bin := pgBinDir()
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		t.Skipf("PostgreSQL binaries not found in %s (set PGWASM_PG_BIN): %v", bin, err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run PostgreSQL as the postgres user")
	}
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("no postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)

	// Not t.TempDir: its parent is 0700 root, which postgres cannot enter.
	root, err := os.MkdirTemp("", "pgwasm-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(root, uid, gid); err != nil {
		t.Fatal(err)
	}
	pg := &testPG{bin: bin, dir: filepath.Join(root, "data"), sockDir: root, port: testkit.FreePort(t, "127.0.0.1")}
	pg.runAsPostgres(t, "initdb", "-D", pg.dir, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nfsync = off\n", pg.port, pg.sockDir)
	f, err := os.OpenFile(filepath.Join(pg.dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		t.Fatal(err)
	}
	f.Close()
	hba := "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(pg.dir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(pg.dir, "pg_hba.conf"), uid, gid); err != nil {
		t.Fatal(err)
	}
	pg.start(t)
	t.Cleanup(func() { pg.stop(t) })
	return pg
}

func (pg *testPG) runAsPostgres(t *testing.T, prog string, args ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(pg.bin, prog)}, args...)...)
	cmd.Dir = pg.sockDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", prog, args, err, out)
	}
}

func (pg *testPG) start(t *testing.T) {
	t.Helper()
	pg.runAsPostgres(t, "pg_ctl", "-D", pg.dir, "-l", filepath.Join(pg.sockDir, "server.log"), "-w", "-t", "60", "start")
}

func (pg *testPG) stop(t *testing.T) {
	t.Helper()
	cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(pg.bin, "pg_ctl"), "-D", pg.dir, "-m", "immediate", "-w", "stop")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("pg_ctl stop: %v\n%s", err, out) // already stopped is fine
	}
}

func (pg *testPG) config() pgConfig {
	return pgConfig{
		SocketDir:      pg.sockDir,
		Port:           pg.port,
		User:           "postgres",
		Database:       "postgres",
		Wait:           10e9,
		MaxResultBytes: 1 << 20,
	}
}

func pgCtlStart(pg *testPG) *exec.Cmd {
	return exec.Command("runuser", "-u", "postgres", "--", filepath.Join(pg.bin, "pg_ctl"), "-D", pg.dir, "-l", filepath.Join(pg.sockDir, "server.log"), "-w", "start")
}
