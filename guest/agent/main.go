// Command agent is the pgwasm guest agent. It runs inside the VM as root,
// speaks the line-delimited JSON protocol of docs/agent-protocol.md on a
// serial port and a virtio-console port, and keeps one PostgreSQL connection
// open, because each new psql process costs seconds inside the emulator.
package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// protocolVersion changes when the wire protocol does; the build's VCS
// revision, when known, is appended so a host can tell builds apart.
const protocolVersion = "2"

// config holds every setting of the agent; the defaults match the guest image.
type config struct {
	Serial        string
	VirtioConsole string
	Verbose       bool

	Splice spliceConfig

	PG pgConfig

	Net netConfig

	DropCaches    string
	CompactMemory string
	Reclaim       string
	Warm          bool
	Console       string
	PGData        string
}

func (c *config) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Serial, "serial", "/dev/ttyS1", "serial device that carries the protocol")
	fs.StringVar(&c.VirtioConsole, "virtio-console", "", "virtio-console port that carries the protocol too, e.g. /dev/hvc1 (empty: none)")
	fs.BoolVar(&c.Verbose, "v", false, "log every request")
	fs.StringVar(&c.Splice.Device, "socket-channel", "", "virtio-console port that carries page connections into PostgreSQL, e.g. /dev/hvc2 (docs/socket-protocol.md; empty: none)")
	fs.IntVar(&c.Splice.MaxConns, "socket-max-conns", 64, "connections the socket channel keeps open at once")
	fs.IntVar(&c.Splice.Window, "socket-window", 64<<10, "bytes a host may send per socket connection before the agent has passed them on")

	fs.StringVar(&c.PG.SocketDir, "pg-socket-dir", "/var/run/postgresql", "directory of the PostgreSQL Unix socket")
	fs.IntVar(&c.PG.Port, "pg-port", 5432, "PostgreSQL port (names the socket file)")
	fs.StringVar(&c.PG.User, "pg-user", "postgres", "PostgreSQL user")
	fs.StringVar(&c.PGData, "pg-data", "", "PostgreSQL data directory: net_up writes a new TLS certificate and key there (empty: keep the image's)")
	fs.StringVar(&c.PG.Database, "pg-database", "postgres", "PostgreSQL database")
	fs.DurationVar(&c.PG.Wait, "pg-wait", 60*time.Second, "how long a SQL request waits for PostgreSQL to accept connections")
	fs.Int64Var(&c.PG.MaxResultBytes, "max-result-bytes", 64<<20, "largest result a request may return (the VM has little memory)")

	fs.StringVar(&c.Net.Interface, "interface", "eth0", "network interface configured by net_up")
	fs.StringVar(&c.Net.Udhcpc, "udhcpc", "/bin/udhcpc", "busybox udhcpc")
	fs.StringVar(&c.Net.Script, "udhcpc-script", "/usr/lib/pgwasm/udhcpc.script", "udhcpc script; it records the lease in -net-state")
	fs.StringVar(&c.Net.StateFile, "net-state", "/run/pgwasm/network", "file where the udhcpc script records the lease")
	fs.DurationVar(&c.Net.Timeout, "net-timeout", 90*time.Second, "time limit for net_up and net_down")

	fs.StringVar(&c.DropCaches, "drop-caches", "/proc/sys/vm/drop_caches", "file written by prepare_snapshot to drop the page cache")
	fs.StringVar(&c.Reclaim, "reclaim", "", "memory cgroup reclaim file written by prepare_snapshot to evict mapped file pages, e.g. /sys/fs/cgroup/memory.reclaim (empty: skip)")
	fs.BoolVar(&c.Warm, "warm", false, "prepare_snapshot runs typical requests after dropping caches, so the pages the first requests after a restore need are in the state")
	fs.StringVar(&c.Console, "console", "", "terminal of the psql console: set_winsize sets its size, and with -warm prepare_snapshot types a query into it (empty: neither)")
	fs.StringVar(&c.CompactMemory, "compact-memory", "/proc/sys/vm/compact_memory", "file written by prepare_snapshot to compact memory (skipped when absent or empty)")
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	var cfg config
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.registerFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if cfg.Verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	db := newPGClient(cfg.PG, log)
	defer db.Close()
	srv := newServer(cfg, db, log)

	paths := []string{cfg.Serial}
	if cfg.VirtioConsole != "" {
		paths = append(paths, cfg.VirtioConsole)
	}
	sb := newSwitchboard(log, func() any { return srv.ready() }, paths...)
	sb.start(ctx)
	if cfg.Splice.Device != "" {
		// Beside the JSON loop, not in it: connections must not wait
		// for requests, nor requests for connections.
		go newSplicer(cfg.Splice, cfg.PG, log).run(ctx)
	}
	// The loop ends only with ctx: the switchboard reopens failed channels.
	if err := srv.serve(ctx, sb.reader(ctx)); err != nil && ctx.Err() == nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	log.Info("agent stopping")
	return 0
}
