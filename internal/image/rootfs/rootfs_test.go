package rootfs

import (
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

func TestMergeUsr(t *testing.T) {
	root := t.TempDir()
	for p, content := range map[string]string{"lib/ld-linux.so.2": "x", "bin/dash": "y", "usr/bin/gcc": "z"} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	meta := Metas{"bin": {Mode: 0o755}, "bin/dash": {Mode: 0o755}, "binary": {Mode: 0o600}, "usr/bin/gcc": {Mode: 0o700}}
	if err := MergeUsr(root, meta); err != nil {
		t.Fatal(err)
	}
	wantMeta := Metas{"usr/bin/dash": {Mode: 0o755}, "binary": {Mode: 0o600}, "usr/bin/gcc": {Mode: 0o700}}
	if !maps.Equal(meta, wantMeta) {
		t.Errorf("meta after MergeUsr = %v, want %v", meta, wantMeta)
	}
	for _, p := range []string{"lib/ld-linux.so.2", "usr/lib/ld-linux.so.2", "bin/dash", "usr/bin/gcc", "bin/gcc"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("after MergeUsr: %v", err)
		}
	}
	if target, err := os.Readlink(filepath.Join(root, "sbin")); err != nil || target != "usr/sbin" {
		t.Errorf("/sbin -> %q, %v; want usr/sbin", target, err)
	}
	if err := MergeUsr(root, nil); err != nil {
		t.Errorf("second MergeUsr: %v", err)
	}
}

func TestTail(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b | c"},
		{"one", 5, "one"},
		{"", 3, ""},
	}
	for _, tt := range tests {
		if got := Tail([]byte(tt.in), tt.n); got != tt.want {
			t.Errorf("Tail(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestUnixModeRoundTrip(t *testing.T) {
	tests := []struct {
		unix uint32
		mode fs.FileMode
	}{
		{0o644, 0o644},
		{0o4755, 0o755 | fs.ModeSetuid},
		{0o2775, 0o775 | fs.ModeSetgid},
		{0o1777, 0o777 | fs.ModeSticky},
		{0o7000, fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky},
	}
	for _, tt := range tests {
		if got := ModeFromUnix(tt.unix); got != tt.mode {
			t.Errorf("ModeFromUnix(%#o) = %v, want %v", tt.unix, got, tt.mode)
		}
		if got := UnixMode(tt.mode); got != tt.unix {
			t.Errorf("UnixMode(%v) = %#o, want %#o", tt.mode, got, tt.unix)
		}
	}
	// File type bits are not a Meta's business.
	if got := ModeFromUnix(0o100644); got != 0o644 {
		t.Errorf("ModeFromUnix(0o100644) = %v, want 0644", got)
	}
}
