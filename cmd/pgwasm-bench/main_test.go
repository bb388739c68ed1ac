package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"testing"
	"time"
)

func TestFitBudget(t *testing.T) {
	if got := fitBudget(context.Background(), 14*time.Minute, 8*time.Minute); got != 14*time.Minute {
		t.Errorf("no deadline: got %v, want the budget unchanged", got)
	}
	for _, tc := range []struct {
		left, budget, tail time.Duration
		wantMax, wantMin   time.Duration
	}{
		{left: time.Hour, budget: 14 * time.Minute, tail: 8 * time.Minute, wantMin: 14 * time.Minute, wantMax: 14 * time.Minute},
		{left: 20 * time.Minute, budget: 14 * time.Minute, tail: 8 * time.Minute, wantMin: 11 * time.Minute, wantMax: 12 * time.Minute},
		{left: 5 * time.Minute, budget: 14 * time.Minute, tail: 8 * time.Minute, wantMin: 0, wantMax: 0},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.left)
		got := fitBudget(ctx, tc.budget, tc.tail)
		cancel()
		if got < tc.wantMin || got > tc.wantMax {
			t.Errorf("%v left, budget %v, tail %v: got %v, want %v-%v", tc.left, tc.budget, tc.tail, got, tc.wantMin, tc.wantMax)
		}
	}
}

func TestParseConfigFromEnvironment(t *testing.T) {
	t.Setenv("PGWASM_IMAGE", "/images/x")
	t.Setenv("PGWASM_BIN", "/bin/pgwasm-x")
	t.Setenv("PGWASM_BOOTS", "4")
	cfg, err := parseConfig([]string{"-quick", "-restores", "7"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ImageDir != "/images/x" || cfg.Bin != "/bin/pgwasm-x" {
		t.Errorf("image %q, bin %q: want the PGWASM_IMAGE and PGWASM_BIN values", cfg.ImageDir, cfg.Bin)
	}
	// -quick lowers only what was not given, by flag or by variable.
	if cfg.Boots != 4 || cfg.Restores != 7 || cfg.QueryRuns != 1 {
		t.Errorf("boots %d, restores %d, query runs %d: want 4 (env), 7 (flag), 1 (quick)", cfg.Boots, cfg.Restores, cfg.QueryRuns)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"-no-such-flag"}, {"stray"}, {"-parts", "vm,disk"}, {"-memory", "100"}} {
		_, err := parseConfig(args, io.Discard)
		if err == nil {
			t.Errorf("%q: parsed, want an error", args)
		}
		if args[0] == "-h" && !errors.Is(err, flag.ErrHelp) {
			t.Errorf("-h: %v, want flag.ErrHelp", err)
		}
	}
}

func TestRunHelpExitsLikePgwasm(t *testing.T) {
	if code := run([]string{"-h"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("-h exit code %d, want 2 as pgwasm's", code)
	}
}
