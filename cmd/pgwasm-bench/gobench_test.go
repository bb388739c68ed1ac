package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestParseBench(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/pgwasm/pgwasm/internal/relay
cpu: Intel(R) Xeon(R) Processor
BenchmarkTCPThroughput/upload-2         	   22776	     52317 ns/op	1252.68 MB/s	         8.100 cpu-ns/B
BenchmarkTCPThroughput/upload-2         	   20000	     60000 ns/op	1000.00 MB/s	         9.000 cpu-ns/B
BenchmarkRoundTripDirect-2   	  200000	      5600 ns/op
BenchmarkIdleSessions/10000-2         	       1	12345678901 ns/op	         2.000 goroutines/attached-session	     88400 relay-bytes/attached-session	     10000 sessions-held
--- FAIL: BenchmarkOther
PASS
ok  	github.com/pgwasm/pgwasm/internal/relay	12.3s
`
	r, err := parseBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, unit string
		n          int
		median     float64
	}{
		{"BenchmarkTCPThroughput/upload", "MB/s", 2, 1126.34},
		{"BenchmarkTCPThroughput/upload", "cpu-ns/B", 2, 8.55},
		{"BenchmarkRoundTripDirect", "ns/op", 1, 5600},
		{"BenchmarkIdleSessions/10000", "relay-bytes/attached-session", 1, 88400},
		{"BenchmarkIdleSessions/10000", "sessions-held", 1, 10000},
	}
	for _, tt := range tests {
		s := r.Get(tt.name, tt.unit)
		if s.N != tt.n || math.Abs(s.Median-tt.median) > 1e-9 {
			t.Errorf("Get(%q, %q) = n %d median %v, want n %d median %v", tt.name, tt.unit, s.N, s.Median, tt.n, tt.median)
		}
	}
	if len(r) != 3 {
		t.Errorf("parsed %d benchmarks, want 3", len(r))
	}
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		in               Sample
		median, min, max float64
	}{
		{Sample{3, 1, 2}, 2, 1, 3},
		{Sample{4, 1, 2, 3}, 2.5, 1, 4},
		{Sample{7}, 7, 7, 7},
	}
	for _, tt := range tests {
		s := tt.in.Summarize()
		if s.Median != tt.median || s.Min != tt.min || s.Max != tt.max {
			t.Errorf("Summarize(%v) = %+v, want median %v min %v max %v", tt.in, s, tt.median, tt.min, tt.max)
		}
	}
	if (Sample{}).Summarize().OK() {
		t.Error("empty sample summarizes as measured")
	}
}

func TestTargetMiss(t *testing.T) {
	tg := atMost("state", Sample{19e6}.Summarize(), 8e6, fmtMB, "docs")
	if tg.met() {
		t.Fatal("19 MB meets an 8 MB limit")
	}
	if got, want := tg.miss(), "- state: 19.00 MB against ≤ 8.00 MB: 11.00 MB over (2.4x the target). Why: docs."; got != want {
		t.Errorf("miss() = %q, want %q", got, want)
	}
	up := atLeast("upload", Sample{80}.Summarize(), 100, fmtMBps, "docs")
	if got, want := up.miss(), "- upload: 80.0 MB/s against ≥ 100.0 MB/s: 20.0 MB/s short (80% of the target). Why: docs."; got != want {
		t.Errorf("miss() = %q, want %q", got, want)
	}
	var buf bytes.Buffer
	r := &report{Cfg: &Config{}, Env: env{}}
	r.write(&buf)
	if !strings.Contains(buf.String(), "# Benchmarks") {
		t.Errorf("empty report lacks its title:\n%s", buf.String())
	}
}

func TestCommas(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -10000: "-10,000"} {
		if got := commas(in); got != want {
			t.Errorf("commas(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestShortVersion(t *testing.T) {
	tests := []struct{ in, want string }{
		{"PostgreSQL 17.11 (Debian 17.11-0+deb13u1) on i686-pc-linux-gnu, compiled by gcc (Debian 14.2.0-19) 14.2.0, 32-bit", "17.11 (i686-pc-linux-gnu)"},
		{"PostgreSQL 15.18 on x86_64-pc-linux-gnu, compiled by gcc", "15.18 (x86_64-pc-linux-gnu)"},
		{"something else", "something else"},
	}
	for _, tt := range tests {
		if got := shortVersion(tt.in); got != tt.want {
			t.Errorf("shortVersion(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
