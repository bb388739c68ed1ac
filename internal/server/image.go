package server

import (
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"regexp"
	"strings"
)

// imageHandler serves the VM image directory. Files named by their content
// hash (the 9p blobs) never change, so browsers may keep them for a year;
// everything else (fs.json, manifests, snapshots) is revalidated on every
// use, because a snapshot only restores with the very 9p tree it was made
// with and a stale mix breaks the VM.
type imageHandler struct {
	dir string
}

// contentAddressed matches names that start with a hex hash of at least 8
// digits, as "1a2b3c4d.bin" or "1a2b3c4d.bin.zst".
var contentAddressed = regexp.MustCompile(`^[0-9a-f]{8,64}(\.[a-z0-9]+)*$`)

var imageTypes = map[string]string{
	".json": "application/json",
	".wasm": "application/wasm",
	".js":   "text/javascript; charset=utf-8",
	".mjs":  "text/javascript; charset=utf-8",
	".html": "text/html; charset=utf-8",
	".txt":  "text/plain; charset=utf-8",
	".bin":  "application/octet-stream",
	// Served as opaque bytes: v86 decompresses .zst itself, so no
	// Content-Encoding (the browser would decompress it first).
	".zst": "application/octet-stream",
	".gz":  "application/octet-stream",
}

func (h *imageHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Path
	if name == "" || strings.HasSuffix(name, "/") || !fs.ValidPath(name) || hasDotSegment(name) {
		http.NotFound(w, r)
		return
	}
	// os.OpenInRoot refuses paths (and symlinks) that leave the directory.
	f, err := os.OpenInRoot(h.dir, name)
	if err != nil {
		// Missing, escaping or unreadable: all look the same from outside.
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	base := path.Base(name)
	hdr := w.Header()
	hdr.Set("Content-Type", contentType(base))
	hdr.Set("X-Content-Type-Options", "nosniff")
	if contentAddressed.MatchString(base) {
		hdr.Set("Cache-Control", "public, max-age=31536000, immutable")
		hdr.Set("ETag", `"`+base+`"`)
	} else {
		hdr.Set("Cache-Control", "no-cache")
		hdr.Set("ETag", fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano()))
	}
	// Cross-origin pages may embed the VM from this server.
	hdr.Set("Access-Control-Allow-Origin", "*")
	http.ServeContent(w, r, base, st.ModTime(), f)
}

func hasDotSegment(name string) bool {
	for _, seg := range strings.Split(name, "/") {
		if strings.HasPrefix(seg, ".") {
			return true
		}
	}
	return false
}

func contentType(base string) string {
	ext := path.Ext(base)
	if t, ok := imageTypes[ext]; ok {
		return t
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return "application/octet-stream"
}
