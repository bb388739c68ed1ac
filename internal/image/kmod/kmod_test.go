package kmod

import (
	"os"
	"path/filepath"
	"testing"
)

func TestModInfoRejectsNonELF(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.ko")
	os.WriteFile(path, []byte("not an ELF file"), 0o644)
	if _, err := ModInfo(path); err == nil {
		t.Fatal("ModInfo(garbage) succeeded")
	}
}
