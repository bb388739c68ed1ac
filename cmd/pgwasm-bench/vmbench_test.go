package main

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/vm"
)

// TestMeasureChannels runs only the agent-channel rows of the bench against
// the image's snapshot and prints them (PGWASM_MEASURE_CHANNELS=N: N
// `select 1` per channel; PGWASM_IMAGE: the image directory). The figures
// in docs/agent-protocol.md come from it.
func TestMeasureChannels(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("PGWASM_MEASURE_CHANNELS"))
	image := os.Getenv("PGWASM_IMAGE")
	if n <= 0 || image == "" {
		t.Skip("PGWASM_MEASURE_CHANNELS and PGWASM_IMAGE are not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	v, err := vm.Start(ctx, vm.Options{ImageDir: image})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	// Warm both channels' paths in the guest first (a restore may fetch
	// pages of the agent and PostgreSQL).
	if _, err := measureChannels(ctx, v, 3, 1); err != nil {
		t.Fatal(err)
	}
	res, err := measureChannels(ctx, v, n, 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("| channel | ping | `select 1` | 1 MB result (%s) |", mbQuery)
	t.Logf("|---|---|---|---|")
	for _, r := range res {
		t.Logf("| %s | %s | %s | %s |", r.Channel, r.Ping.Summarize().Format(fmtMSFine), r.SelectOne.Summarize().Format(fmtMSFine), r.MB.Summarize().Format(fmtMS))
	}
}
