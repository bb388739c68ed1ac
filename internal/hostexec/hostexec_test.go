package hostexec

import (
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// buildFor compiles a tiny Go program for goarch: a real ELF file of that
// machine, not a hand-made header.
func buildFor(t *testing.T, goarch string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "prog-"+goarch)
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+goarch, "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build for %s: %v: %s", goarch, err, b)
	}
	return out
}

func TestRefusesForeignELF(t *testing.T) {
	if runtime.GOARCH == "386" {
		t.Skip("the host is i386: build for amd64 instead")
	}
	i386 := buildFor(t, "386")
	_, err := Command(context.Background(), i386)
	var fe *ForeignError
	if !errors.As(err, &fe) {
		t.Fatalf("Command(i386 program) = %v, want a *ForeignError", err)
	}
	if fe.Machine != elf.EM_386 || fe.Host != HostMachine() {
		t.Errorf("ForeignError = %+v, want machine EM_386 on host %v", fe, HostMachine())
	}
	t.Logf("refusal reads: %v", err)
}

func TestRefusesScriptWithForeignInterpreter(t *testing.T) {
	if runtime.GOARCH == "386" {
		t.Skip("the host is i386")
	}
	i386 := buildFor(t, "386")
	script := filepath.Join(t.TempDir(), "script")
	os.WriteFile(script, []byte("#!"+i386+" -x\necho hi\n"), 0o755)
	// A script naming that script: two levels of interpreters.
	outer := filepath.Join(t.TempDir(), "outer")
	os.WriteFile(outer, []byte("#! "+script+"\n"), 0o755)
	for _, p := range []string{script, outer} {
		var fe *ForeignError
		if err := Check(p); !errors.As(err, &fe) || fe.Path != i386 || fe.Program != p {
			t.Errorf("Check(%s) = %v, want a *ForeignError naming %s", p, err, i386)
		}
	}
}

func TestRunsHostPrograms(t *testing.T) {
	host := buildFor(t, runtime.GOARCH)
	script := filepath.Join(t.TempDir(), "script.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755)
	for _, name := range []string{host, "sh", script} {
		cmd, err := Command(context.Background(), name)
		if err != nil {
			t.Fatalf("Command(%s): %v", name, err)
		}
		if err := cmd.Run(); err != nil {
			t.Errorf("running %s: %v", name, err)
		}
	}
}

func TestMissingProgram(t *testing.T) {
	if _, err := Command(context.Background(), "pgwasm-no-such-program"); err == nil {
		t.Fatal("Command of a missing program succeeded")
	}
	if err := Check(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("Check of a missing file succeeded")
	}
}
