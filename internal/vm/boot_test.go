package vm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/guest"
)

// TestBootExportTree full-boots a built image with Boot (the image build's
// entry), follows the console, and copies a directory out of v86's 9p file
// system with ExportTree: files that were never loaded (blobs), owners and
// modes, and the refusals. Needs PGWASM_IMAGE (about 30 s).
func TestBootExportTree(t *testing.T) {
	dir := os.Getenv("PGWASM_IMAGE")
	if dir == "" {
		t.Skip("PGWASM_IMAGE is not set (a built image directory)")
	}
	img, err := LoadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A full boot is 15-30 s on a quiet machine and several minutes on a
	// loaded one (seen: 3 min at load 17 on 2 cores): wait for evidence,
	// within the test binary's own limit.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ready := make(chan struct{})
	var once bool
	v, err := Boot(ctx, BootOptions{
		Files: img.bootFiles(),
		OnConsole: func(line string) {
			// guest/init starts psql on the console once PostgreSQL is up.
			if !once && strings.Contains(line, "psql") {
				once = true
				close(ready)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Image() != nil {
		t.Error("a booted VM claims an image")
	}
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatalf("no psql banner on the console within 8 minutes; console:\n%s", v.ConsoleTail())
	}
	if _, err := v.SaveState(ctx, filepath.Join(t.TempDir(), "state.bin.zst")); err == nil {
		t.Error("SaveState works without an image")
	}

	out := filepath.Join(t.TempDir(), "pgwasm")
	entries, err := v.ExportTree(ctx, "/usr/lib/pgwasm", out)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]TreeEntry{}
	for _, e := range entries {
		byPath[e.Path] = e
	}
	if len(entries) == 0 || entries[0].Path != "." || entries[0].Type != "dir" || entries[0].Mode != 0o755 {
		t.Fatalf("first entry %+v, want the directory itself", entries)
	}
	script, err := os.ReadFile(filepath.Join(out, "udhcpc.script"))
	if err != nil || !bytes.Equal(script, guest.UdhcpcScript) {
		t.Errorf("udhcpc.script exported as %d bytes (%v), want guest/udhcpc.script", len(script), err)
	}
	agent := byPath["agent"]
	data, err := os.ReadFile(filepath.Join(out, "agent"))
	if err != nil || int64(len(data)) != agent.Size || agent.Size < 1<<20 || !bytes.HasPrefix(data, []byte("\x7fELF")) {
		t.Errorf("agent: listed %+v, exported %d bytes (%v)", agent, len(data), err)
	}
	if agent.Type != "file" || agent.Mode != 0o755 || agent.UID != 0 || agent.GID != 0 {
		t.Errorf("agent listed as %+v, want a root-owned 0755 file", agent)
	}
	if st, err := os.Stat(filepath.Join(out, "agent")); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("host copy of the agent: %v, %v; want an owner-writable 0644 file", st.Mode(), err)
	}

	// The data directory as the running guest has it: postgres's, 0700.
	data2 := filepath.Join(t.TempDir(), "main")
	entries, err = v.ExportTree(ctx, "/var/lib/postgresql/17/main", data2)
	if err != nil {
		t.Fatal(err)
	}
	if e := entries[0]; e.UID != 999 || e.GID != 999 || e.Mode != 0o700 {
		t.Errorf("data directory listed as %+v, want 999:999 0700", e)
	}
	if _, err := os.Stat(filepath.Join(data2, "PG_VERSION")); err != nil {
		t.Error(err)
	}

	for _, c := range []struct{ path, out, want string }{
		{"/usr/lib/pgwasm", out, "exists"},
		{"/usr/lib/pgwasm/agent", filepath.Join(t.TempDir(), "x"), "not a directory"},
		{"/no/such/dir", filepath.Join(t.TempDir(), "x"), "no /no/such/dir"},
		{"/tmp", filepath.Join(t.TempDir(), "x"), "guest's own"},
	} {
		if _, err := v.ExportTree(ctx, c.path, c.out); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ExportTree(%s) = %v, want an error with %q", c.path, err, c.want)
		}
	}
}
