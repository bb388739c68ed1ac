package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// setSystemClock sets the guest's wall clock: after a state restore it is
// frozen at the time the state was saved.
func setSystemClock(t time.Time) error {
	tv := unix.NsecToTimeval(t.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("cannot set clock: %w", err)
	}
	return nil
}

func syncFS() { unix.Sync() }

// snapshotLog reports each step of prepare_snapshot.
type snapshotLog struct {
	Checkpoint    bool     `json:"checkpoint"`
	Synced        bool     `json:"synced"`
	DroppedCaches bool     `json:"dropped_caches"`
	Compacted     bool     `json:"compacted"`
	Notes         []string `json:"notes,omitempty"`
}

// prepareSnapshot makes the guest's memory small and consistent before the
// host saves a state: a CHECKPOINT so the restored server needs no recovery,
// then dropping clean pages so they are not stored (v86 stores only non-zero
// pages and the kernel zeroes freed ones with init_on_free=1). Every step is
// tried even if an earlier one failed.
func (s *server) prepareSnapshot(ctx context.Context) response {
	var log snapshotLog
	var errs []error
	if _, err := s.db.Exec(ctx, "CHECKPOINT"); err != nil {
		errs = append(errs, fmt.Errorf("checkpoint failed: %w", err))
	} else {
		log.Checkpoint = true
	}
	s.sys.sync()
	log.Synced = true
	if err := writeKnob(s.sys.dropCaches, "3"); err != nil {
		errs = append(errs, err)
	} else {
		log.DroppedCaches = true
	}
	// Compaction is optional: kernels without CONFIG_COMPACTION lack the file.
	if s.sys.compactMemory == "" {
		log.Notes = append(log.Notes, "memory compaction disabled")
	} else if err := writeKnob(s.sys.compactMemory, "1"); err != nil {
		log.Notes = append(log.Notes, err.Error())
	} else {
		log.Compacted = true
	}
	if err := errors.Join(errs...); err != nil {
		r := fail(err)
		r.Snapshot = &log
		return r
	}
	return response{OK: true, Snapshot: &log}
}

// writeKnob writes a value to a /proc/sys file, which must already exist.
func writeKnob(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cannot open %s: %w", path, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return nil
}
