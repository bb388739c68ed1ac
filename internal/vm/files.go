package vm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// fileChunk is the size of one write_file/read_file chunk: a 1 MiB base64
// line each way keeps the harness's JSON lines small and its memory flat.
const fileChunk = 768 << 10

// SetRelay moves the VM's NIC to another relay URL (ws:// or wss://) and
// returns once its websocket is open, e.g. to a new session after the relay
// restarted and forgot the old one. The VM must have been started with a
// RelayURL. The guest keeps its address; run the agent's net_up afterwards to
// take a lease from the new session.
func (v *VM) SetRelay(ctx context.Context, url string) error {
	_, err := v.h.call(ctx, "set_relay", map[string]any{"url": url, "timeout_ms": harnessTimeout(ctx, 10*time.Second)})
	return err
}

// WriteFile creates the file path (absolute, in the guest's root file system)
// with data, through v86's 9p server. The file appears whole, owned by the
// owner of its directory (mode 0644 under a 0755 directory), which must
// exist. An existing path is refused: the guest caches files (9p
// cache=loose) and could keep showing the old contents. Paths on the guest's
// own mounts (/tmp, /run, /dev, /proc, /sys) are refused too.
func (v *VM) WriteFile(ctx context.Context, path string, data []byte) error {
	for off := 0; ; {
		end := min(off+fileChunk, len(data))
		_, err := v.h.call(ctx, "write_file", map[string]any{
			"path":        path,
			"offset":      off,
			"size":        len(data),
			"data_base64": base64.StdEncoding.EncodeToString(data[off:end]),
		})
		if err != nil {
			return err
		}
		off = end
		if off == len(data) {
			return nil
		}
	}
}

// ReadFile reads the file path (absolute) from the guest's root file system
// through v86's 9p server. It first asks the guest to sync (through the
// agent, so PostgreSQL must be up), because what the guest wrote may still be
// in its page cache only.
func (v *VM) ReadFile(ctx context.Context, path string) ([]byte, error) {
	if _, err := v.Exec(ctx, "COPY (SELECT 1) TO PROGRAM 'sync'"); err != nil {
		return nil, fmt.Errorf("read %s: cannot sync the guest: %w", path, err)
	}
	var out []byte
	for {
		msg, err := v.h.call(ctx, "read_file", map[string]any{"path": path, "offset": len(out), "length": fileChunk})
		if err != nil {
			return nil, err
		}
		var data []byte // encoding/json decodes base64 into []byte
		var size int
		if err := json.Unmarshal(msg["data_base64"], &data); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if err := json.Unmarshal(msg["size"], &size); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if out == nil {
			out = make([]byte, 0, size)
		}
		out = append(out, data...)
		if len(out) >= size {
			return out[:size], nil
		}
		if len(data) == 0 {
			return nil, fmt.Errorf("read %s: no data at %d of %d bytes", path, len(out), size)
		}
	}
}
