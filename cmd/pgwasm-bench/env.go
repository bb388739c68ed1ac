package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// env describes the machine and the software a run measured.
type env struct {
	Date     string
	CPU      string
	Cores    int
	Memory   string
	Load     string
	LoadEnd  string
	Go       string
	Node     string
	V86      string
	ImagePG  string
	ImageKey string
	Commit   string
	Wall     string
}

func collectEnv(ctx context.Context, cfg *Config, logger *slog.Logger) env {
	e := env{
		Date:  time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		CPU:   "unknown CPU",
		Cores: runtime.NumCPU(),
	}
	if name, ok := procField("/proc/cpuinfo", "model name"); ok {
		e.CPU = name
	}
	if kb, ok := procField("/proc/meminfo", "MemTotal"); ok {
		if n, err := strconv.ParseFloat(strings.TrimSuffix(kb, " kB"), 64); err == nil {
			e.Memory = fmt.Sprintf("%.1f GiB", n/(1<<20))
		}
	}
	e.Load = loadAvg()
	e.Go = cmdOutput(ctx, cfg.Go, "env", "GOVERSION")
	e.Node = cmdOutput(ctx, "node", "--version")
	if h, err := vm.FindHarness(cfg.HarnessDir); err == nil {
		var pkg struct {
			Version string `json:"version"`
		}
		if b, err := os.ReadFile(filepath.Join(h, "node_modules", "v86", "package.json")); err == nil && json.Unmarshal(b, &pkg) == nil {
			e.V86 = pkg.Version
		}
	} else {
		logger.Warn("no harness", "err", err)
	}
	if m, err := manifest.Read(cfg.ImageDir); err == nil {
		e.ImageKey = m.Key[:min(12, len(m.Key))]
		e.ImagePG = m.PostgresVersion
	} else {
		logger.Warn("no image", "err", err)
	}
	e.Commit = cmdOutput(ctx, "git", "rev-parse", "--short=12", "HEAD")
	// diff-index only reads; it never takes the index lock.
	if err := exec.CommandContext(ctx, "git", "diff-index", "--quiet", "HEAD", "--").Run(); err != nil {
		e.Commit += " with uncommitted changes in the work tree"
	}
	return e
}

// procField returns the first "name : value" of a /proc file.
func procField(path, name string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

func cmdOutput(ctx context.Context, name string, args ...string) string {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return "unknown (" + name + ": " + err.Error() + ")"
	}
	return strings.TrimSpace(string(out))
}

// loadAvg is the 1, 5 and 15 minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}
