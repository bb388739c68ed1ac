package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"
)

// idleResults is the CPU a ready page uses while nothing runs (issue #16
// item 5): each run is a fresh `node web/test/bench.mjs --idle`.
type idleResults struct {
	Seconds int
	Percent Sample // of one core, all Chromium processes together
}

// ourIdle is what web/test/bench.mjs --idle prints.
type ourIdle struct {
	Seconds    float64 `json:"idle_seconds"`
	CPUSeconds float64 `json:"idle_cpu_seconds"`
	Percent    float64 `json:"idle_cpu_percent"`
	Processes  int     `json:"idle_processes"`
}

func measureIdle(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *idleResults {
	r := &idleResults{Seconds: cfg.IdleSeconds}
	env := cfg.pageEnv()
	for i := range cfg.IdleRuns {
		var out ourIdle
		err := runJSON(ctx, logger, &out, 10*time.Minute, env, "node", "web/test/bench.mjs", "--idle", strconv.Itoa(cfg.IdleSeconds))
		if err != nil {
			*errs = append(*errs, fmt.Sprintf("idle CPU of a ready page: %v", err))
			break
		}
		logger.Info("idle page", "run", i+1, "cpu_percent", out.Percent, "processes", out.Processes)
		r.Percent = append(r.Percent, out.Percent)
	}
	return r
}

func fmtPercent(v float64) string { return fmt.Sprintf("%.1f%%", v) }

func (r *report) writeIdle(w io.Writer) {
	fmt.Fprintf(w, "## Idle page\n\n")
	fmt.Fprintf(w, "CPU of a ready page in headless Chromium while nothing runs: user+system time of every Chromium process (browser, renderer, GPU, utility) over %d s, 10 s after the first query, from /proc; `node web/test/bench.mjs --idle %d`, a fresh browser each run.\n\n", r.Idle.Seconds, r.Idle.Seconds)
	tb := newTable(w, "what", "measured", "target", "", "note")
	r.targetRow(tb, atMost("CPU of an idle ready tab (% of one core)", r.Idle.Percent.Summarize(), 5, fmtPercent, "[web.md](web.md#idle-cpu)"), "issue #16 item 5; it was ~48%")
	fmt.Fprintln(w)
}
