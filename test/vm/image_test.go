package vm_test

import (
	"strings"
	"testing"
	"time"
)

// The image is built without root, from owners and modes the pipeline
// carries beside the tree (docs/image.md): the VM must see them as a root
// build would have made them, and the cross-built pgvector must load.
func TestImageOwnersAndModes(t *testing.T) {
	image, _ := env(t)
	ctx, v := startVM(t, image, 3*time.Minute)
	const script = `create temp table st (line text);
copy st from program 'stat -c "%n %U:%G %a" /tmp /var/tmp /var/lib/postgresql /var/lib/postgresql/17/main /var/lib/postgresql/17/main/PG_VERSION /var/lib/postgresql/17/main/server.key /etc/shadow /usr/bin/wget /usr/lib/pgwasm/agent';
select line from st`
	res, err := v.Exec(ctx, script)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, row := range res[len(res)-1].Rows {
		name, rest, _ := strings.Cut(*row[0], " ")
		got[name] = rest
	}
	for path, want := range map[string]string{
		"/tmp":                                   "root:root 1777",
		"/var/tmp":                               "root:root 1777",
		"/var/lib/postgresql":                    "postgres:postgres 755",
		"/var/lib/postgresql/17/main":            "postgres:postgres 700",
		"/var/lib/postgresql/17/main/PG_VERSION": "postgres:postgres 600",
		"/var/lib/postgresql/17/main/server.key": "postgres:postgres 600",
		"/etc/shadow":                            "root:root 640",
		"/usr/bin/wget":                          "root:root 777", // a busybox applet link
		"/usr/lib/pgwasm/agent":                  "root:root 755",
	} {
		if got[path] != want {
			t.Errorf("%s: %q, want %q", path, got[path], want)
		}
	}
}

func TestPGVector(t *testing.T) {
	image, _ := env(t)
	out, stderr, code := run(t, "vm", "run", "--image", image, "-c",
		"create extension if not exists vector; select '[1,2,3]'::vector <-> '[1,2,5]' as distance")
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr)
	}
	if !strings.Contains(out, "distance") || !strings.Contains(out, " 2\n") {
		t.Errorf("pgvector distance is not 2:\n%s", out)
	}
}

// The time zone database is whole and /etc/localtime resolves (tzdata's
// postinst never runs in the build; #17 found pg_timezone_names failing).
func TestTimeZones(t *testing.T) {
	image, _ := env(t)
	ctx, v := startVM(t, image, 3*time.Minute)
	res, err := v.Query(ctx, `select count(*) >= 400, (timestamptz '2026-07-01 12:00+00' at time zone 'Europe/Berlin')::text from pg_timezone_names`)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 2 || res.Rows[0][0] == nil || res.Rows[0][1] == nil {
		t.Fatalf("time zones: %d rows", len(res.Rows))
	}
	if many, berlin := *res.Rows[0][0], *res.Rows[0][1]; many != "t" || berlin != "2026-07-01 14:00:00" {
		t.Errorf("at least 400 zones: %s; noon UTC in Berlin: %s, want t and 2026-07-01 14:00:00", many, berlin)
	}
}
