package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Sample is a series of measurements of one quantity in one run.
type Sample []float64

// Summary is a sample's median, min and max.
type Summary struct {
	N                int
	Median, Min, Max float64
}

// Summarize reduces a sample; N is 0 for an empty one.
func (s Sample) Summarize() Summary {
	if len(s) == 0 {
		return Summary{}
	}
	v := slices.Clone([]float64(s))
	slices.Sort(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Summary{N: len(v), Median: m, Min: v[0], Max: v[len(v)-1]}
}

// OK says whether there is anything to report.
func (s Summary) OK() bool { return s.N > 0 }

// Format prints "median (min-max, n=N)" with f formatting each value.
func (s Summary) Format(f func(float64) string) string {
	if !s.OK() {
		return "not measured"
	}
	if s.N == 1 {
		return f(s.Median) + " (n=1)"
	}
	return fmt.Sprintf("%s (%s–%s, n=%d)", f(s.Median), f(s.Min), f(s.Max), s.N)
}

// Ratio is a/b of two medians, or NaN when either is missing.
func Ratio(a, b Summary) float64 {
	if !a.OK() || !b.OK() || b.Median == 0 {
		return math.NaN()
	}
	return a.Median / b.Median
}

// Value formatters.

func fmtSeconds(ms float64) string { return fmt.Sprintf("%.2f s", ms/1000) }
func fmtMS(ms float64) string      { return fmt.Sprintf("%.0f ms", ms) }
func fmtMSFine(ms float64) string  { return fmt.Sprintf("%.1f ms", ms) }
func fmtMB(b float64) string       { return fmt.Sprintf("%.2f MB", b/1e6) }
func fmtKB(b float64) string       { return fmt.Sprintf("%.1f KB", b/1e3) }
func fmtMBps(v float64) string     { return fmt.Sprintf("%.1f MB/s", v) }
func fmtCount(v float64) string    { return commas(int64(math.Round(v))) }
func fmtRatio(r float64) string {
	if math.IsNaN(r) {
		return "n/a"
	}
	if r >= 10 {
		return fmt.Sprintf("%.0fx", r)
	}
	return fmt.Sprintf("%.2fx", r)
}

// fmtDur prints a duration given in nanoseconds with a fitting unit.
func fmtDur(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.2f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	default:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	}
}

func fmtFloat(v float64) string { return fmt.Sprintf("%.2f", v) }
func fmtNsB(v float64) string   { return fmt.Sprintf("%.2f ns/B", v) }

// commas formats 12345 as 12,345.
func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
