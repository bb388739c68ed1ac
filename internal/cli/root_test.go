package cli

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestNewLoggerDebugEnv(t *testing.T) {
	tests := []struct {
		debug, format string
		wantDebug     bool
		wantWarn      bool
	}{
		{"", "", false, false},
		{"0", "", false, false},
		{"false", "", false, false},
		{"FALSE", "json", false, false},
		{"off", "", false, false},
		{"no", "", false, false},
		{" 0 ", "", false, false},
		{"1", "", true, false},
		{"true", "", true, false},
		{"True", "json", true, false},
		{"yes", "", true, false},
		{"on", "", true, false},
		{"verbose", "", false, true},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		env := map[string]string{"PGWASM_DEBUG": tt.debug, "PGWASM_LOG_FORMAT": tt.format}
		log := newLogger(&buf, func(k string) string { return env[k] })
		if got := log.Enabled(context.Background(), slog.LevelDebug); got != tt.wantDebug {
			t.Errorf("PGWASM_DEBUG=%q: debug enabled = %v, want %v", tt.debug, got, tt.wantDebug)
		}
		if got := strings.Contains(buf.String(), "PGWASM_DEBUG ignored"); got != tt.wantWarn {
			t.Errorf("PGWASM_DEBUG=%q: warning = %v (%q), want %v", tt.debug, got, buf.String(), tt.wantWarn)
		}
		log.Info("x")
		if json := strings.HasPrefix(buf.String(), "{"); json != (tt.format == "json") {
			t.Errorf("PGWASM_LOG_FORMAT=%q: output %q", tt.format, buf.String())
		}
	}
}
