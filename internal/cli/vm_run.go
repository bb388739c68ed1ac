package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// vmRunConfig holds the flags of `pgwasm vm run`.
type vmRunConfig struct {
	image    string
	memory   int
	fullBoot bool
	state    string
	command  string
	file     string
	timings  bool
	json     bool
	harness  string
	node     string
	relay    string
	channel  string
	timeout  time.Duration
}

func (c *vmRunConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.image, "image", "build/image", "image directory (from pgwasm image build)")
	fs.IntVar(&c.memory, "memory", 0, fmt.Sprintf("memory size in MB (default: the state's, or %d)", manifest.DefaultMemoryMB))
	fs.BoolVar(&c.fullBoot, "full-boot", false, "boot the kernel instead of restoring the snapshot")
	fs.StringVar(&c.state, "state", "", "restore this state file instead of the image's snapshot")
	fs.StringVar(&c.command, "c", "", "SQL to run (any number of statements)")
	fs.StringVar(&c.file, "f", "", "file of SQL to run (- for stdin)")
	fs.BoolVar(&c.timings, "timings", false, "report the start phases (stderr; inside the output with --json)")
	fs.BoolVar(&c.json, "json", false, "print results as JSON")
	fs.StringVar(&c.harness, "harness", "", "directory of the Node harness (vm.mjs); found automatically when empty")
	fs.StringVar(&c.node, "node", "node", "Node.js executable")
	fs.StringVar(&c.relay, "relay", "", "v86 network relay URL (ws://...) for the VM's NIC; none when empty")
	fs.StringVar(&c.channel, "agent-channel", "", "channel to the guest agent: virtio-console or serial (default: the image's first choice)")
	fs.DurationVar(&c.timeout, "timeout", 0, "limit for the start until PostgreSQL answers (default 1m restore, 5m full boot)")
}

func newVMRunCommand(e *env) *ffcli.Command {
	var cfg vmRunConfig
	fs := newFlagSet("run", e)
	cfg.RegisterFlags(fs)
	return &ffcli.Command{
		Name:       "run",
		ShortUsage: "pgwasm vm run [--image DIR] [--memory MB] [--full-boot] [-c SQL | -f FILE] [--timings] [--json]",
		ShortHelp:  "start the VM headless (from its snapshot) and run SQL in it",
		LongHelp: "Exit status: 0 when every statement ran, 3 on an SQL error (the server's message\n" +
			"and SQLSTATE go to stderr), 1 when the VM could not run.",
		FlagSet: fs,
		Options: envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("run: unexpected arguments %q", args)
			}
			return runVM(ctx, e, &cfg)
		},
	}
}

func runVM(ctx context.Context, e *env, cfg *vmRunConfig) error {
	sql, err := cfg.sql()
	if err != nil {
		return err
	}
	v, err := vm.Start(ctx, vm.Options{
		ImageDir:     cfg.image,
		Memory:       cfg.memory,
		FullBoot:     cfg.fullBoot,
		StatePath:    cfg.state,
		HarnessDir:   cfg.harness,
		Node:         cfg.node,
		RelayURL:     cfg.relay,
		AgentChannel: cfg.channel,
		ReadyTimeout: cfg.timeout,
		Logger:       e.logger,
	})
	if err != nil {
		return err
	}
	defer v.Close()

	var results []vm.Result
	var sqlErr *vm.SQLError
	if sql != "" {
		results, err = v.Exec(ctx, sql)
		if err != nil && !errors.As(err, &sqlErr) {
			return fmt.Errorf("exec: %w", err)
		}
	}
	timings := v.Timings()
	var stats *vm.Stats
	if cfg.timings {
		if stats, err = v.Stats(ctx); err != nil {
			return err
		}
	}

	if cfg.json {
		out := struct {
			Results []vm.Result   `json:"results"`
			Error   *vm.SQLError  `json:"error,omitempty"`
			Timings *vm.Timings   `json:"timings,omitempty"`
			Blob    *vm.BlobStats `json:"blob,omitempty"`
		}{Results: results, Error: sqlErr}
		if out.Results == nil {
			out.Results = []vm.Result{}
		}
		if cfg.timings {
			out.Timings, out.Blob = &timings, stats.Blob
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
	} else {
		for i := range results {
			printResult(e.stdout, &results[i])
		}
		if cfg.timings {
			line, _ := json.Marshal(struct {
				vm.Timings
				Blob *vm.BlobStats `json:"blob,omitempty"`
			}{timings, stats.Blob})
			fmt.Fprintln(e.stderr, string(line))
		}
	}
	if sqlErr != nil {
		return exitError{code: 3, err: sqlErr}
	}
	return nil
}

// sql returns the SQL from -c or -f; empty means only start the VM.
func (c *vmRunConfig) sql() (string, error) {
	switch {
	case c.command != "" && c.file != "":
		return "", errors.New("run: give -c or -f, not both")
	case c.command != "":
		return c.command, nil
	case c.file == "-":
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return "", fmt.Errorf("read SQL from stdin: %w", err)
		}
		return string(b), nil
	case c.file != "":
		b, err := os.ReadFile(c.file)
		if err != nil {
			return "", fmt.Errorf("read SQL: %w", err)
		}
		return string(b), nil
	}
	return "", nil
}

// numericTypes are right-aligned, as psql does.
var numericTypes = map[string]bool{
	"int2": true, "int4": true, "int8": true, "float4": true, "float8": true,
	"numeric": true, "oid": true, "money": true,
}

// printResult prints one statement's result the way psql's aligned format
// does: a table with a row count for statements that return rows, the
// command tag otherwise. A value with newlines spans several lines, each but
// the last marked with "+".
func printResult(w io.Writer, r *vm.Result) {
	if len(r.Columns) == 0 {
		fmt.Fprintln(w, r.Command)
		return
	}
	widths := make([]int, len(r.Columns))
	for i, c := range r.Columns {
		widths[i] = utf8.RuneCountInString(c.Name)
	}
	cellLines := func(row []*string, i int) []string {
		if i >= len(row) || row[i] == nil {
			return []string{""}
		}
		return strings.Split(*row[i], "\n")
	}
	for _, row := range r.Rows {
		for i := range widths {
			for _, l := range cellLines(row, i) {
				widths[i] = max(widths[i], utf8.RuneCountInString(l))
			}
		}
	}
	header := make([]string, len(r.Columns))
	rule := make([]string, len(r.Columns))
	for i, c := range r.Columns {
		n := widths[i] - utf8.RuneCountInString(c.Name) // psql centres headers
		header[i] = " " + strings.Repeat(" ", n/2) + c.Name + strings.Repeat(" ", n-n/2) + " "
		rule[i] = strings.Repeat("-", widths[i]+2)
	}
	fmt.Fprintln(w, strings.TrimRight(strings.Join(header, "|"), " "))
	fmt.Fprintln(w, strings.Join(rule, "+"))
	for _, row := range r.Rows {
		lines := make([][]string, len(r.Columns))
		height := 1
		for i := range lines {
			lines[i] = cellLines(row, i)
			height = max(height, len(lines[i]))
		}
		for l := range height {
			cells := make([]string, len(r.Columns))
			for i := range cells {
				v, more := "", " "
				if l < len(lines[i]) {
					v = lines[i][l]
					if l < len(lines[i])-1 {
						more = "+"
					}
				}
				n := widths[i] - utf8.RuneCountInString(v)
				if numericTypes[r.Columns[i].Type] {
					v = strings.Repeat(" ", n) + v
				} else {
					v += strings.Repeat(" ", n)
				}
				cells[i] = " " + v + more
			}
			fmt.Fprintln(w, strings.TrimRight(strings.Join(cells, "|"), " "))
		}
	}
	if len(r.Rows) == 1 {
		fmt.Fprintln(w, "(1 row)")
	} else {
		fmt.Fprintf(w, "(%d rows)\n", len(r.Rows))
	}
	fmt.Fprintln(w)
}
