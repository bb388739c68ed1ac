package vm

import (
	"context"
	"encoding/json"
)

// HarnessCall sends one raw command to the harness and returns its answer
// (for debugging commands such as irq_debug).
func (v *VM) HarnessCall(ctx context.Context, cmd string) (json.RawMessage, error) {
	msg, err := v.h.call(ctx, cmd, nil)
	if err != nil {
		return nil, err
	}
	return json.Marshal(msg)
}
