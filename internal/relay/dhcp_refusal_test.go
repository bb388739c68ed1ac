package relay_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgwasm/pgwasm/internal/testkit/simvm"
)

// The DHCP server answers to 255.255.255.255, and gVisor loops its own
// broadcasts back into the stack, where the UDP forwarder saw them as a
// flow from the gateway and the NAT refused it. Those are not the VM's
// flows: nothing may be counted for a plain lease.
func TestDHCPNotCountedAsRefused(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 10*time.Second)
	s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := simvm.Dial(ctx, e.wsURL(s))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	for i := 0; i < 3; i++ { // a lease and two renewals' worth of replies
		if _, err := vm.DHCP(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The looped broadcast is handled on the stack's packet path; give it
	// a moment to be (mis)counted.
	time.Sleep(200 * time.Millisecond)
	if n := testutil.ToFloat64(mustVec(t, e.reg, "pgwasm_relay_refusals_total")); n != 0 {
		t.Errorf("refusals after DHCP = %v, want 0", n)
	}
}
