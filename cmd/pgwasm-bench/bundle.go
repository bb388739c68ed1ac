package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// bundleSize is the browser app as built into internal/web/dist (what
// `pgwasm serve` embeds): every file it serves, raw and as sent to a
// browser that accepts gzip (the .gz twin where there is one).
type bundleSize struct {
	Files     int
	Raw, Sent int64
	V86Raw    int64 // v86.wasm alone, raw
	V86Sent   int64
}

func measureBundle(dir string) (bundleSize, error) {
	var b bundleSize
	entries, err := os.ReadDir(dir)
	if err != nil {
		return b, fmt.Errorf("cannot read the app bundle (make web): %w", err)
	}
	size := func(name string) (int64, bool) {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return 0, false
		}
		return st.Size(), true
	}
	for _, e := range entries {
		name := e.Name()
		// Licence notes and the .gz twins are not pages' downloads of their own.
		if e.IsDir() || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".gz") || strings.HasSuffix(name, ".LEGAL.txt") {
			continue
		}
		raw, _ := size(name)
		sent := raw
		if gz, ok := size(name + ".gz"); ok && gz < raw {
			sent = gz
		}
		b.Files++
		b.Raw += raw
		b.Sent += sent
		if name == "v86.wasm" {
			b.V86Raw, b.V86Sent = raw, sent
		}
	}
	if b.Files == 0 {
		return b, fmt.Errorf("the app bundle in %s is empty (make web)", dir)
	}
	return b, nil
}
