// Package web serves the browser app (the page, the embedding API module
// /pgwasm.js, the example page and v86's WebAssembly) from files embedded in
// the binary. The files are built from web/ by Build (go run
// ./internal/web/cmd/webbuild, make web).
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

//go:embed all:dist
var embedded embed.FS

// Assets returns the embedded build output.
func Assets() fs.FS {
	sub, err := fs.Sub(embedded, "dist")
	if err != nil {
		panic(err) // "dist" is a valid constant path
	}
	return sub
}

// Handler serves a built web app from fsys.
type Handler struct {
	fsys  fs.FS
	etags map[string]string // file -> strong ETag of its content
	built bool
	// scripts are the CSP hashes ('sha256-...') of the inline scripts
	// in the HTML files.
	scripts []string
}

// NewHandler serves fsys (Assets() for the embedded app). Files under
// chunks/ and assets/ carry a content hash in their names and are cached
// for a year; everything else is revalidated (ETag) on every use. A file
// with a .gz twin is sent compressed to clients that accept gzip.
func NewHandler(fsys fs.FS) (*Handler, error) {
	h := &Handler{fsys: fsys, etags: map[string]string{}}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasPrefix(path.Base(p), ".") {
			return nil // .gitignore and the like are not assets
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		h.etags[p] = `"` + hex.EncodeToString(sum[:12]) + `"`
		if path.Ext(p) == ".html" {
			h.scripts = append(h.scripts, inlineScriptHashes(data)...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot index web assets: %w", err)
	}
	_, h.built = h.etags["index.html"]
	slices.Sort(h.scripts)
	h.scripts = slices.Compact(h.scripts)
	return h, nil
}

// ScriptHashes returns the CSP source expressions ('sha256-...') of the
// inline scripts in the app's HTML files (the example page has one), so a
// Content-Security-Policy can allow exactly those instead of
// 'unsafe-inline'.
func (h *Handler) ScriptHashes() []string { return slices.Clone(h.scripts) }

// inlineScript matches a <script> element and its text. The HTML files are
// our own (web/static), so a pattern is enough; a browser would refuse a
// script whose hash this got wrong, and the browser tests load every page.
var (
	inlineScript = regexp.MustCompile(`(?is)<script\b([^>]*)>(.*?)</script\s*>`)
	srcAttr      = regexp.MustCompile(`(?i)\bsrc\s*=`)
)

// inlineScriptHashes hashes the text of each <script> without src, exactly
// as the browser does (CSP3: SHA-256 of the UTF-8 text, base64).
func inlineScriptHashes(html []byte) []string {
	var out []string
	for _, m := range inlineScript.FindAllSubmatch(html, -1) {
		if srcAttr.Match(m[1]) {
			continue
		}
		sum := sha256.Sum256(m[2])
		out = append(out, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	return out
}

// Built reports whether the assets hold a built app (index.html).
func (h *Handler) Built() bool { return h.built }

var types = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".mjs":  "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".wasm": "application/wasm",
	".map":  "application/json",
	".json": "application/json",
	".txt":  "text/plain; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
}

const notBuilt = `<!doctype html><meta charset="utf-8"><title>pgwasm</title>
<p>The web app is not built into this binary. Run <code>make web build</code>
(or <code>go run ./internal/web/cmd/webbuild</code>, then rebuild pgwasm).</p>`

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	if name == "" {
		name = "index.html"
	}
	if !h.built {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, notBuilt)
		return
	}
	etag, ok := h.etags[name]
	if !ok || strings.HasSuffix(name, ".gz") {
		http.NotFound(w, r)
		return
	}
	hdr := w.Header()
	ctype := types[path.Ext(name)]
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	hdr.Set("Content-Type", ctype)
	hdr.Set("X-Content-Type-Options", "nosniff")
	if embeddable(name) {
		hdr.Set("Access-Control-Allow-Origin", "*")
	}
	if strings.HasPrefix(name, "chunks/") || strings.HasPrefix(name, "assets/") {
		hdr.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		hdr.Set("Cache-Control", "no-cache")
	}
	file := name
	if _, ok := h.etags[name+".gz"]; ok {
		hdr.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r) && r.Header.Get("Range") == "" {
			file = name + ".gz"
			hdr.Set("Content-Encoding", "gzip")
			etag = strings.TrimSuffix(etag, `"`) + `-gz"`
		}
	}
	hdr.Set("ETag", etag)
	data, err := fs.ReadFile(h.fsys, file)
	if err != nil {
		http.Error(w, "cannot read asset", http.StatusInternalServerError)
		return
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
}

// embeddable reports the files other origins' pages load when they embed
// the VM (docs/web.md, "Embedding API"): the module, the emulator's worker
// (from another origin the module starts it as a blob: worker that imports
// it), v86's WebAssembly and anything the bundler splits out. A module script and a wasm fetch from
// another origin need CORS. "*" is safe for them: they are the same public
// bytes for everyone and the server uses no cookies or credentials. The
// page, its script and the example are only used from this origin and get
// no CORS header.
func embeddable(name string) bool {
	return name == "pgwasm.js" || name == "vm-worker.js" || name == "v86.wasm" ||
		strings.HasPrefix(name, "chunks/") || strings.HasPrefix(name, "assets/")
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") && strings.ReplaceAll(strings.TrimSpace(q), " ", "") != "q=0" {
			return true
		}
	}
	return false
}
