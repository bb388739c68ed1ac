package vm

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestAgentClientJS runs the tests of the JavaScript agent client that the
// harness and the page share (harness/agent-client.test.mjs: matching,
// refusals, streamed parts, requests in pieces, version errors) with the
// Node the harness uses, so make test-go covers it.
func TestAgentClientJS(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skipf("node not installed: %v", err)
	}
	out, err := exec.Command(node, "--test", filepath.Join("..", "..", "harness", "agent-client.test.mjs")).CombinedOutput()
	if err != nil {
		t.Fatalf("node --test agent-client.test.mjs: %v\n%s", err, out)
	}
}
