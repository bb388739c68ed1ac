package hostpg

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestStartTrustAndPassword starts both kinds of server the repository
// uses, a trusted one (the bench) and one with a password and TLS (the
// tests), and checks each answers as its options say over TCP.
func TestStartTrustAndPassword(t *testing.T) {
	if err := Check(""); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("no psql")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	psql := func(conninfo string) (string, error) {
		cmd := exec.CommandContext(ctx, "psql", "-XAtc", "select current_setting('port'), current_setting('jit')", conninfo)
		cmd.Env = append(os.Environ(), "PGPASSWORD=", "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"trust", Options{Conf: "jit = off\n"}},
		{"password", Options{Password: "s3cret", TLS: true, Conf: "jit = off\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Start(ctx, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := s.Stop(context.Background()); err != nil {
					t.Log(err)
				}
				if err := s.Remove(); err != nil {
					t.Error(err)
				}
				if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
					t.Errorf("%s still there after Remove: %v", s.Dir, err)
				}
			})
			base := "host=127.0.0.1 port=" + strings.Split(s.Addr, ":")[1] + " user=postgres dbname=postgres"
			want := strings.Split(s.Addr, ":")[1] + "|off"
			if tc.opts.Password == "" {
				if out, err := psql(base + " sslmode=disable"); err != nil || out != want {
					t.Fatalf("trusted TCP login: %q, %v", out, err)
				}
				return
			}
			if out, err := psql(base + " sslmode=require password=wrong"); err == nil {
				t.Fatalf("a wrong password was let in: %q", out)
			}
			if out, err := psql(base + " sslmode=require password=" + tc.opts.Password); err != nil || out != want {
				t.Fatalf("password login over TLS: %q, %v\n%s", out, err, s.Log())
			}
		})
	}
}
