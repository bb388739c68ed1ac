// Package hostexec is the one way the image pipeline starts a program on the
// build machine. Before anything runs it checks that the program, and for a
// "#!" script its interpreter, is an ELF file for the host's own machine: the
// image's packages are i386, and a host without IA32 emulation (or an arm64
// one) fails with a bare "Exec format error" when one of them is started,
// while a host that can run them hides the mistake. Refusing foreign programs
// everywhere makes both hosts fail the same way, with a message that says
// which file and why.
//
//	cmd, err := hostexec.Command(ctx, "dpkg-deb", "--fsys-tarfile", path)
//	if err != nil { return err } // *ForeignError for an i386 program
//	out, err := cmd.Output()
package hostexec

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// ForeignError says a program was refused because it is built for another
// machine than the host's.
type ForeignError struct {
	Path    string      // the file that was checked (a script's interpreter, say)
	Program string      // what the caller asked to run
	Machine elf.Machine // the file's machine, e.g. EM_386
	Host    elf.Machine
}

func (e *ForeignError) Error() string {
	what := e.Path
	if e.Program != "" && e.Program != e.Path {
		what = fmt.Sprintf("%s (for %s)", e.Path, e.Program)
	}
	return fmt.Sprintf("refusing to run %s: it is built for %s, this host is %s; the image build never runs the image's own programs on the host", what, machineName(e.Machine), machineName(e.Host))
}

// Command returns a command for name (looked up in PATH unless it contains a
// slash) after checking it with Check.
func Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("cannot find %s on this host: %w", name, err)
	}
	if err := Check(path); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Args[0] = name
	return cmd, nil
}

// Check returns a *ForeignError when path is an ELF file for another
// machine, or a script whose interpreter is. Other files (scripts of host
// interpreters, non-ELF files) pass: the kernel decides about those.
func Check(path string) error {
	return check(path, path, 0)
}

// maxInterpreterDepth bounds chains of scripts naming scripts as their
// interpreter (the kernel allows 4 levels too).
const maxInterpreterDepth = 4

func check(program, path string, depth int) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cannot check %s before running it: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, 256)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("cannot check %s before running it: %w", path, err)
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		ef, err := elf.NewFile(f)
		if err != nil {
			return fmt.Errorf("cannot check %s before running it: not a readable ELF file: %w", path, err)
		}
		host := HostMachine()
		if ef.Machine != host {
			return &ForeignError{Path: path, Program: program, Machine: ef.Machine, Host: host}
		}
		return nil
	case bytes.HasPrefix(head, []byte("#!")):
		if depth >= maxInterpreterDepth {
			return fmt.Errorf("cannot check %s before running it: too many levels of interpreters", program)
		}
		line, _, _ := bufio.NewReader(bytes.NewReader(head[2:])).ReadLine()
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return nil
		}
		return check(program, fields[0], depth+1)
	}
	return nil
}

// HostMachine is the ELF machine of the programs this host runs natively.
func HostMachine() elf.Machine {
	switch runtime.GOARCH {
	case "amd64":
		return elf.EM_X86_64
	case "386":
		return elf.EM_386
	case "arm64":
		return elf.EM_AARCH64
	case "arm":
		return elf.EM_ARM
	case "riscv64":
		return elf.EM_RISCV
	case "ppc64", "ppc64le":
		return elf.EM_PPC64
	case "s390x":
		return elf.EM_S390
	case "loong64":
		return elf.EM_LOONGARCH
	}
	return elf.EM_NONE
}

func machineName(m elf.Machine) string {
	switch m {
	case elf.EM_386:
		return "i386 (32-bit x86)"
	case elf.EM_X86_64:
		return "x86-64"
	case elf.EM_AARCH64:
		return "arm64"
	}
	return strings.TrimPrefix(m.String(), "EM_")
}
