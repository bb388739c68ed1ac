package vm_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// The agent answers on virtio-console (the harness's default when the image
// offers it) after a full boot and after a restore of a state saved from
// it; a 1 MB result and a 1 MB request cross it intact; and the serial
// channel, which the page still uses, answers in the same VM.
func TestAgentChannels(t *testing.T) {
	image, _ := env(t)
	img, err := vm.LoadImage(image)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(img.AgentChannels(), manifest.ChannelVirtioConsole) {
		t.Fatalf("image %s offers agent channels %v, want virtio-console", image, img.AgentChannels())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	v, err := vm.Start(ctx, vm.Options{ImageDir: image, FullBoot: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := v.AgentChannel(); got != manifest.ChannelVirtioConsole {
		t.Errorf("default agent channel %q, want virtio-console", got)
	}
	for _, ch := range []string{manifest.ChannelVirtioConsole, manifest.ChannelSerial} {
		if got := selectOn(ctx, t, v, ch, "after boot"); got != "booted "+ch {
			t.Errorf("after boot on %s: %q", ch, got)
		}
	}
	path := filepath.Join(t.TempDir(), "channel.bin.zst")
	if _, err := v.SaveState(ctx, path); err != nil {
		v.Close()
		t.Fatal(err)
	}
	v.Close()

	v, err = vm.Start(ctx, vm.Options{ImageDir: image, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, ch := range []string{manifest.ChannelVirtioConsole, manifest.ChannelSerial} {
		if got := selectOn(ctx, t, v, ch, "after restore"); got != "booted "+ch {
			t.Errorf("after restore on %s: %q", ch, got)
		}
	}

	// 1 MB out: 10,000 distinct rows, so a lost, repeated or reordered
	// piece shows.
	start := time.Now()
	res, err := v.Query(ctx, "select i, repeat(chr(97 + i % 26), 100) from generate_series(1, 10000) i")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("1 MB result on virtio-console: %v", time.Since(start).Round(time.Millisecond))
	if len(res.Rows) != 10000 {
		t.Fatalf("%d rows, want 10000", len(res.Rows))
	}
	for i, row := range res.Rows {
		n := i + 1
		if want := strings.Repeat(string(rune('a'+n%26)), 100); *row[0] != fmt.Sprint(n) || *row[1] != want {
			t.Fatalf("row %d = %q %q, want %d and 100 × %q", i, *row[0], (*row[1])[:min(len(*row[1]), 20)], n, want[:1])
		}
	}

	// Nearly 1 MB in (a request line may have 1 MiB): the host fills the
	// guest's buffers a batch at a time.
	var in strings.Builder
	for i := 0; in.Len() < 1000000; i++ {
		fmt.Fprintf(&in, "%d,", i)
	}
	sum := md5.Sum([]byte(in.String()))
	start = time.Now()
	res, err = v.Query(ctx, "select md5($1), length($1)", in.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d-byte request on virtio-console: %v", in.Len(), time.Since(start).Round(time.Millisecond))
	if *res.Rows[0][0] != hex.EncodeToString(sum[:]) || *res.Rows[0][1] != fmt.Sprint(in.Len()) {
		t.Errorf("guest saw md5 %s length %s, sent %x length %d", *res.Rows[0][0], *res.Rows[0][1], sum, in.Len())
	}

	// Over the line limit: a clear error at once, and the next request works.
	_, err = v.Query(ctx, "select length($1)", strings.Repeat("z", 1100000))
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("1.1 MB request: %v, want the agent's line limit", err)
	}
	if got := selectOn(ctx, t, v, manifest.ChannelVirtioConsole, "after a refused request"); got != "booted virtio-console" {
		t.Errorf("after a refused request: %q", got)
	}
}

// selectOn runs one query on an agent channel and returns its value.
func selectOn(ctx context.Context, t *testing.T, v *vm.VM, channel, when string) string {
	t.Helper()
	raw, err := v.RequestOn(ctx, channel, map[string]any{"op": "query", "sql": "select 'booted ' || $1::text", "params": []string{channel}})
	if err != nil {
		t.Fatalf("%s on %s: %v", when, channel, err)
	}
	var res vm.Result
	if err := json.Unmarshal(raw, &res); err != nil || len(res.Rows) != 1 || res.Rows[0][0] == nil {
		t.Fatalf("%s on %s: answer %s (%v)", when, channel, raw, err)
	}
	return *res.Rows[0][0]
}
