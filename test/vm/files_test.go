package vm_test

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Files go in and out of the VM through v86's 9p server (the harness's
// write_file/read_file), 5 MB each way, and the guest sees exactly what was
// written.
func TestFileTransfer(t *testing.T) {
	image, _ := env(t)
	ctx, v := startVM(t, image, 5*time.Minute)

	const size = 5 << 20
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	dir := "/var/lib/postgresql"
	in := fmt.Sprintf("%s/in-%d.bin", dir, time.Now().UnixNano())

	// In: the guest reads the file we wrote (md5 as PostgreSQL computes it).
	start := time.Now()
	if err := v.WriteFile(ctx, in, data); err != nil {
		t.Fatal(err)
	}
	t.Logf("WriteFile 5 MB: %v", time.Since(start).Round(time.Millisecond))
	sum := md5.Sum(data)
	res, err := v.Query(ctx, "select md5(pg_read_binary_file($1)), (pg_stat_file($1)).size", in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := *res.Rows[0][0], hex.EncodeToString(sum[:]); got != want || *res.Rows[0][1] != fmt.Sprint(size) {
		t.Errorf("guest sees md5 %s, size %s; want %s, %d", got, *res.Rows[0][1], want, size)
	}

	// Out: a file the guest wrote just now (still in its page cache: ReadFile
	// syncs first), compared with the guest's own sha256.
	out := fmt.Sprintf("%s/out-%d.bin", dir, time.Now().UnixNano())
	if _, err := v.Exec(ctx, fmt.Sprintf("COPY (SELECT 1) TO PROGRAM 'head -c %d /dev/urandom > %s'", size, out)); err != nil {
		t.Fatal(err)
	}
	res, err = v.Query(ctx, "select encode(sha256(pg_read_binary_file($1)), 'hex')", out)
	if err != nil {
		t.Fatal(err)
	}
	guestSum := *res.Rows[0][0]
	start = time.Now()
	got, err := v.ReadFile(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ReadFile 5 MB: %v", time.Since(start).Round(time.Millisecond))
	if s := sha256.Sum256(got); len(got) != size || hex.EncodeToString(s[:]) != guestSum {
		t.Errorf("ReadFile: %d bytes, sha256 %x; guest has %d bytes, sha256 %s", len(got), s, size, guestSum)
	}

	// The file we wrote comes back byte for byte.
	back, err := v.ReadFile(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(back) != sha256.Sum256(data) {
		t.Errorf("round trip of %s: %d bytes back, not the %d written", in, len(back), len(data))
	}

	// An empty file, and the refusals.
	empty := fmt.Sprintf("%s/empty-%d", dir, time.Now().UnixNano())
	if err := v.WriteFile(ctx, empty, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := v.ReadFile(ctx, empty); err != nil || len(b) != 0 {
		t.Errorf("empty file: %d bytes, %v", len(b), err)
	}
	for _, tt := range []struct{ path, want string }{
		{in, "exists"},
		{"/tmp/x", "guest's own /tmp mount"},
		{"/no/such/dir/x", "directory does not exist"},
		{"relative", "must be absolute"},
	} {
		if err := v.WriteFile(ctx, tt.path, []byte("x")); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("WriteFile(%q) = %v, want an error with %q", tt.path, err, tt.want)
		}
	}
	if _, err := v.ReadFile(ctx, dir+"/no-such-file"); err == nil || !strings.Contains(err.Error(), "no file") {
		t.Errorf("ReadFile of a missing file: %v", err)
	}
}
