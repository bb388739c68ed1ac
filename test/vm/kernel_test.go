package vm_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/manifest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// The VM runs the kernel its manifest names, with the manifest's command
// line: ours (--kernel source) carries the fixed build identity and has no
// modules loaded and, on a machine with a local APIC (the manifest's acpi),
// times its ticks with the APIC; Debian's says Debian and runs on modules.
func TestKernelIsTheManifests(t *testing.T) {
	dir, _ := env(t)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A loaded module has /sys/module/<name>/initstate; built-in ones do not.
	sql := `select pg_read_file('/proc/version'), pg_read_file('/proc/cmdline'),
		(select count(*) from pg_ls_dir('/sys/module') d where (pg_stat_file('/sys/module/' || d || '/initstate', true)).size is not null),
		pg_read_file('/sys/devices/system/clockevents/clockevent0/current_device')`
	out, stderr, code := run(t, "vm", "run", "--image", dir, "--json", "-c", sql)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr)
	}
	var res struct {
		Results []vm.Result `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Results) != 1 || len(res.Results[0].Rows) != 1 {
		t.Fatalf("unexpected output (%v):\n%s", err, out)
	}
	row := res.Results[0].Rows[0]
	if len(row) != 4 || row[0] == nil || row[1] == nil || row[2] == nil || row[3] == nil {
		t.Fatalf("unexpected row: %s", out)
	}
	version, cmdline, modules, clock := *row[0], strings.TrimSpace(*row[1]), *row[2], strings.TrimSpace(*row[3])
	t.Logf("kernel_build=%v acpi=%v; %s; modules loaded: %s; clock-event device: %s", m.KernelBuild != nil, m.ACPI, strings.TrimSpace(version), modules, clock)
	if cmdline != m.Cmdline {
		t.Errorf("/proc/cmdline = %q, manifest says %q", cmdline, m.Cmdline)
	}
	if m.KernelBuild != nil {
		if !strings.Contains(version, "(pgwasm@pgwasm)") || !strings.Contains(version, "#1 2025-01-01 00:00:00 UTC") {
			t.Errorf("the image boots our kernel, but /proc/version has no fixed build identity: %q", version)
		}
		if modules != "0" {
			t.Errorf("our kernel has %s modules loaded, want none", modules)
		}
		// The PIT would wake the idle guest every 27 ms (docs/vm.md, "Idle CPU").
		if want := map[bool]string{true: "lapic", false: "pit"}[m.ACPI]; clock != want {
			t.Errorf("clock-event device %q with acpi=%v, want %q", clock, m.ACPI, want)
		}
	} else {
		if !strings.Contains(version, "Debian") {
			t.Errorf("the image boots Debian's kernel, but /proc/version does not say Debian: %q", version)
		}
		if modules == "0" {
			t.Error("Debian's kernel runs without modules, but the initramfs loads them")
		}
	}
}
