// Code generated from internal/manifest/memory.go by TestWebMemoryRule; DO NOT EDIT.
// After changing the rule there: UPDATE_SNAPSHOTS=1 go test -run TestWebMemoryRule ./internal/manifest

// MEMORY_SIZES are the memory sizes the page offers (MB), smallest first.
export const MEMORY_SIZES = [128, 256, 512, 1024];
// DEFAULT_MEMORY_MB is the memory size of a first start.
export const DEFAULT_MEMORY_MB = 128;
// VGA_MEMORY_MB is part of every state, so it never varies.
export const VGA_MEMORY_MB = 2;
