package manifest

import "fmt"

// The VM memory rule. A state restores only into a machine with the memory
// it was saved with, so the image's snapshots, the CLI, the bench and the
// page must agree on it; the page gets it from web/src/memory.ts,
// generated from these (TestWebMemoryRule).
const (
	// DefaultMemoryMB is the memory size when none is given: the image's
	// first snapshot and the page's first start.
	DefaultMemoryMB = 128
	// MinMemoryMB and MaxMemoryMB bound the sizes v86 is run with; a size
	// is a power of two between them.
	MinMemoryMB = 32
	MaxMemoryMB = 2048
	// VGAMemoryMB is the VGA memory: the console is serial, so the VGA
	// only needs text mode, and a small one keeps states small. It is
	// part of every state, so it never varies.
	VGAMemoryMB = 2
)

// MemorySizes are the memory sizes the product offers (MB), smallest first:
// the page's choices and the snapshots the bench reads.
func MemorySizes() []int { return []int{128, 256, 512, 1024} }

// CheckMemory says why mb is not a memory size v86 can run with.
func CheckMemory(mb int) error {
	if mb < MinMemoryMB || mb > MaxMemoryMB || mb&(mb-1) != 0 {
		return fmt.Errorf("memory size %d MB: want a power of two from %d to %d", mb, MinMemoryMB, MaxMemoryMB)
	}
	return nil
}
