package cli

import (
	"io"
	"testing"

	"github.com/peterbourgon/ff/v3"
)

// `image build` (and so `make image`) makes a virtio-net image; the NE2000
// stays one flag away.
func TestImageBuildNetDevice(t *testing.T) {
	for want, args := range map[string][]string{"virtio": nil, "ne2k": {"--net-device", "ne2k"}} {
		var c imageBuildConfig
		fs := c.registerFlags(&env{stdout: io.Discard, stderr: io.Discard})
		if err := ff.Parse(fs, args, envOptions()...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if c.NetDevice != want {
			t.Errorf("%v: net device %q, want %q", args, c.NetDevice, want)
		}
	}
}
