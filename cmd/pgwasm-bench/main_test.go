package main

import (
	"context"
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
