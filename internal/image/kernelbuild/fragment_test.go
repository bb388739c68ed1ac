package kernelbuild

import (
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/guest/kernel"
)

func TestParseFragment(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []Option // on success
		err      string   // a substring of the error
	}{
		{name: "reasons", in: "# intro\n\n# the root\nCONFIG_9P_FS=y\n# two ports\nCONFIG_SERIAL_8250_NR_UARTS=2\n# a name\nCONFIG_CMDLINE=\"a b\"\n# no audit\n# CONFIG_AUDIT is not set\n",
			want: []Option{{"CONFIG_9P_FS", "y", "the root", 4}, {"CONFIG_SERIAL_8250_NR_UARTS", "2", "two ports", 6}, {"CONFIG_CMDLINE", `"a b"`, "a name", 8}, {"CONFIG_AUDIT", "n", "no audit", 10}}},
		{name: "no reason", in: "CONFIG_PCI=y\n", err: "line 1: CONFIG_PCI has no reason"},
		{name: "reason cut by a blank line", in: "# why\n\nCONFIG_PCI=y\n", err: "line 3: CONFIG_PCI has no reason"},
		{name: "one reason, two options", in: "# why\nCONFIG_PCI=y\nCONFIG_NET=y\n", err: "line 3: CONFIG_NET has no reason"},
		{name: "module", in: "# why\nCONFIG_9P_FS=m\n", err: "no modules"},
		{name: "bad value", in: "# why\nCONFIG_PCI=yes\n", err: `line 2: CONFIG_PCI has the value "yes"`},
		{name: "twice", in: "# why\nCONFIG_PCI=y\n# again\nCONFIG_PCI=y\n", err: "line 4: CONFIG_PCI is set again (first on line 2)"},
		{name: "garbage", in: "# why\nPCI=y\n", err: `line 2: "PCI=y" is neither`},
		{name: "empty", in: "# nothing\n", err: "sets no option"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFragment([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseFragment = %v, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("ParseFragment = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("option %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// The repository's fragment follows the rules: every option has its
// reason, none is a module, none is set twice.
func TestRepositoryFragment(t *testing.T) {
	opts, err := ParseFragment(kernel.Config)
	if err != nil {
		t.Fatalf("guest/kernel/pgwasm.config: %v", err)
	}
	names := map[string]bool{}
	for _, o := range opts {
		names[o.Name] = true
	}
	// What the boot cannot do without; a fragment edit that loses one
	// fails here rather than in a VM that never mounts its root.
	for _, n := range []string{"CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO", "CONFIG_VIRTIO_PCI", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS", "CONFIG_DEVPORT", "CONFIG_NE2K_PCI", "CONFIG_VIRTIO_CONSOLE", "CONFIG_SYSVIPC", "CONFIG_COMPAT_32BIT_TIME"} {
		if !names[n] {
			t.Errorf("guest/kernel/pgwasm.config does not set %s", n)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	opts, err := ParseFragment([]byte("# a\nCONFIG_9P_FS=y\n# b\nCONFIG_HZ_100=y\n# c\n# CONFIG_AUDIT is not set\n# d\nCONFIG_NR_UARTS=2\n# e\n# CONFIG_IPV6 is not set\n"))
	if err != nil {
		t.Fatal(err)
	}
	good := "CONFIG_9P_FS=y\nCONFIG_HZ_100=y\n# CONFIG_AUDIT is not set\nCONFIG_NR_UARTS=2\n"
	if err := CheckConfig(opts, []byte(good)); err != nil {
		t.Errorf("CheckConfig(matching .config) = %v", err)
	}
	bad := "# CONFIG_9P_FS is not set\nCONFIG_AUDIT=y\nCONFIG_NR_UARTS=4\n"
	err = CheckConfig(opts, []byte(bad))
	if err == nil {
		t.Fatal("CheckConfig accepted a .config that lacks what the fragment asks for")
	}
	for _, want := range []string{"CONFIG_9P_FS=y (line 2): the final configuration has n", "CONFIG_HZ_100=y (line 4): not in the final configuration", "CONFIG_AUDIT=n (line 6): the final configuration has y", "CONFIG_NR_UARTS=2 (line 8): the final configuration has 4"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CheckConfig error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "IPV6") {
		t.Errorf("CheckConfig error %q names CONFIG_IPV6, which is off in both", err)
	}
}
