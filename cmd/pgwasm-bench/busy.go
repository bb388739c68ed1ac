package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"
)

// busyResults is issue #11's page target: the main thread while a long
// query runs in psql (v86 runs there too); each run is one query of
// `node web/test/bench.mjs --busy`, in one page.
type busyResults struct {
	Runs []ourBusy
}

// ourBusy is one run of web/test/lib.mjs mainThreadDuring.
type ourBusy struct {
	Query           string  `json:"query"`
	QueryMS         float64 `json:"queryMs"`
	Interactions    int     `json:"interactions"`
	Missed          int     `json:"missed"`
	LongestTaskMS   float64 `json:"longestTaskMs"`
	TasksOver100    int     `json:"tasksOver100"`
	LongTasks       int     `json:"longTasks"`
	MaxInputDelayMS float64 `json:"maxInputDelayMs"`
	LongestSliceMS  float64 `json:"longestSliceMs"`
	SlicesOver100   int     `json:"slicesOver100"`
}

func measureBusy(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *busyResults {
	env := cfg.pageEnv()
	var out struct {
		Busy []ourBusy `json:"busy"`
	}
	if err := runJSON(ctx, logger, &out, 20*time.Minute, env, "node", "web/test/bench.mjs", "--busy", strconv.Itoa(cfg.BusyRuns)); err != nil {
		*errs = append(*errs, fmt.Sprintf("the page during a long query: %v", err))
		return nil
	}
	for i, b := range out.Busy {
		logger.Info("busy page", "run", i+1, "query_ms", b.QueryMS, "longest_task_ms", b.LongestTaskMS, "max_input_delay_ms", b.MaxInputDelayMS)
	}
	return &busyResults{Runs: out.Busy}
}

// busyWhy is where the docs explain a missed main-thread target.
const busyWhy = "[web.md](web.md#the-main-thread-during-a-long-query): v86 runs on the page's main thread"

func (r *report) writeBusy(w io.Writer) {
	if len(r.Busy.Runs) == 0 {
		return
	}
	var task, delay, slice, over, query, long Sample
	missed := 0
	for _, b := range r.Busy.Runs {
		task = append(task, b.LongestTaskMS)
		delay = append(delay, b.MaxInputDelayMS)
		slice = append(slice, b.LongestSliceMS)
		over = append(over, float64(b.TasksOver100))
		long = append(long, float64(b.LongTasks))
		query = append(query, b.QueryMS)
		missed += b.Missed
	}
	fmt.Fprintf(w, "## The page during a long query (issue #11)\n\n")
	fmt.Fprintf(w, "`%s` typed into psql in a ready page in headless Chromium (not throttled), %d runs in one page (`node web/test/bench.mjs --busy %d`); while it runs, every 400 ms a click on a `<details>` summary and a word typed into a text field, as web/test/ui.spec.mjs does. ", r.Busy.Runs[0].Query, len(r.Busy.Runs), len(r.Busy.Runs))
	fmt.Fprintf(w, "Long tasks are the browser's own (`PerformanceObserver` \"longtask\": over 50 ms, no input handled meanwhile); input delay is Event Timing's `processingStart - startTime` of clicks and keys (reported from 16 ms); emulator slices are v86's `main_loop` calls over 50 ms. Clicks or words without effect: %d.\n\n", missed)
	tb := newTable(w, "what", "measured", "target", "", "note")
	r.targetRow(tb, atMost("longest main-thread task while the query runs", task.Summarize(), 100, fmtMS, busyWhy), "")
	tb.row("longest input delay of a click or key", delay.Summarize().Format(fmtMS), "", "", "")
	tb.row("longest emulator slice (v86 `main_loop`)", slice.Summarize().Format(fmtMS), "", "", "the rest of a long task is the page, the browser or the host's scheduler")
	tb.row("main-thread tasks over 50 ms / over 100 ms", long.Summarize().Format(fmtCount)+" / "+over.Summarize().Format(fmtCount), "", "", "")
	tb.row("the query", query.Summarize().Format(fmtMS), "", "", "")
	fmt.Fprintln(w)
}
