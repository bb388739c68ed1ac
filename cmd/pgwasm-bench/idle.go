package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"
)

// idleResults is the CPU a ready page uses while nothing runs (issue #16
// item 5): each run is a fresh `node web/test/bench.mjs --idle`, measured
// twice in the same tab: soon after it became idle (Percent) and LateAfter
// seconds after (Late), when v86's JIT has compiled what the idle guest runs.
type idleResults struct {
	Seconds   int
	LateAfter int
	Percent   Sample // of one core, all Chromium processes together
	Late      Sample
}

// idleWindow is one window of what web/test/bench.mjs --idle prints.
type idleWindow struct {
	Seconds    float64 `json:"idle_seconds"`
	CPUSeconds float64 `json:"idle_cpu_seconds"`
	Percent    float64 `json:"idle_cpu_percent"`
	Processes  int     `json:"idle_processes"`
}

// ourIdle is what web/test/bench.mjs --idle --late prints.
type ourIdle struct {
	idleWindow
	Late *idleWindow `json:"late"`
}

func measureIdle(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *idleResults {
	r := &idleResults{Seconds: cfg.IdleSeconds, LateAfter: cfg.IdleLate}
	env := cfg.pageEnv()
	for i := range cfg.IdleRuns {
		var out ourIdle
		err := runJSON(ctx, logger, &out, 15*time.Minute, env, "node", "web/test/bench.mjs", "--idle", strconv.Itoa(cfg.IdleSeconds), "--late", strconv.Itoa(cfg.IdleLate))
		if err == nil && out.Late == nil {
			err = errors.New("bench.mjs printed no late window")
		}
		if err != nil {
			*errs = append(*errs, fmt.Sprintf("idle CPU of a ready page: %v", err))
			break
		}
		logger.Info("idle page", "run", i+1, "cpu_percent", out.Percent, "late_cpu_percent", out.Late.Percent, "processes", out.Processes)
		r.Percent = append(r.Percent, out.Percent)
		r.Late = append(r.Late, out.Late.Percent)
	}
	return r
}

func fmtPercent(v float64) string { return fmt.Sprintf("%.1f%%", v) }

func (r *report) writeIdle(w io.Writer) {
	fmt.Fprintf(w, "## Idle page\n\n")
	fmt.Fprintf(w, "CPU of a ready page in headless Chromium while nothing runs: user+system time of every Chromium process (browser, renderer, GPU, utility) over %d s, from /proc, in one tab twice: 10 s after the first query was kept, and %d s after that (a tab left open; the target applies to it: in the first minute V8 still compiles the code v86's JIT makes of what the idle guest runs); `node web/test/bench.mjs --idle %d --late %d`, a fresh browser each run.\n\n", r.Idle.Seconds, r.Idle.LateAfter, r.Idle.Seconds, r.Idle.LateAfter)
	tb := newTable(w, "what", "measured", "target", "", "note")
	r.targetRow(tb, atMost(fmt.Sprintf("CPU of an idle ready tab, from %d s idle (%% of one core)", r.Idle.LateAfter), r.Idle.Late.Summarize(), 5, fmtPercent, "[web.md](web.md#idle-cpu)"), "issue #16 item 5; it was ~48%")
	tb.row("the same in its first minute idle, from 10 s", r.Idle.Percent.Summarize().Format(fmtPercent), "", "", "")
	fmt.Fprintln(w)
}
