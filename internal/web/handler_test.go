package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

func gz(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestHandler(t *testing.T) {
	app := strings.Repeat("console.log('pgwasm');\n", 50)
	fsys := fstest.MapFS{
		"index.html":         {Data: []byte("<!doctype html><title>pgwasm</title>")},
		"app.js":             {Data: []byte(app)},
		"app.js.gz":          {Data: gz(t, app)},
		"v86.wasm":           {Data: []byte("\x00asm")},
		"chunks/lib-ABCD.js": {Data: []byte("x")},
		"example.html":       {Data: []byte("example")},
	}
	h, err := NewHandler(fsys)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Built() {
		t.Fatal("Built() = false with index.html present")
	}
	tests := []struct {
		name, method, path, accept string
		code                       int
		ctype, encoding, cache     string
		body                       string
	}{
		{"root is index", "GET", "/", "", 200, "text/html; charset=utf-8", "", "no-cache", "<!doctype html><title>pgwasm</title>"},
		{"js plain", "GET", "/app.js", "", 200, "text/javascript; charset=utf-8", "", "no-cache", app},
		{"js gzip", "GET", "/app.js", "br, gzip", 200, "text/javascript; charset=utf-8", "gzip", "no-cache", app},
		{"gzip refused", "GET", "/app.js", "gzip;q=0", 200, "text/javascript; charset=utf-8", "", "no-cache", app},
		{"wasm type", "GET", "/v86.wasm", "gzip", 200, "application/wasm", "", "no-cache", "\x00asm"},
		{"hashed chunk cached", "GET", "/chunks/lib-ABCD.js", "", 200, "text/javascript; charset=utf-8", "", "public, max-age=31536000, immutable", "x"},
		{"gz twin hidden", "GET", "/app.js.gz", "", 404, "", "", "", ""},
		{"missing", "GET", "/nope.js", "", 404, "", "", "", ""},
		{"dotfile hidden", "GET", "/.gitignore", "", 404, "", "", "", ""},
		{"dot dot", "GET", "/../index.html", "", 200, "text/html; charset=utf-8", "", "no-cache", "<!doctype html><title>pgwasm</title>"},
		{"post refused", "POST", "/app.js", "", 405, "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, nil)
			if tt.accept != "" {
				req.Header.Set("Accept-Encoding", tt.accept)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			res := rec.Result()
			if res.StatusCode != tt.code {
				t.Fatalf("%s %s: status %d, want %d", tt.method, tt.path, res.StatusCode, tt.code)
			}
			if tt.code != 200 {
				return
			}
			if got := res.Header.Get("Content-Type"); got != tt.ctype {
				t.Errorf("Content-Type = %q, want %q", got, tt.ctype)
			}
			if got := res.Header.Get("Content-Encoding"); got != tt.encoding {
				t.Errorf("Content-Encoding = %q, want %q", got, tt.encoding)
			}
			if got := res.Header.Get("Cache-Control"); got != tt.cache {
				t.Errorf("Cache-Control = %q, want %q", got, tt.cache)
			}
			var body io.Reader = res.Body
			if tt.encoding == "gzip" {
				zr, err := gzip.NewReader(res.Body)
				if err != nil {
					t.Fatal(err)
				}
				body = zr
			}
			b, err := io.ReadAll(body)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.body {
				t.Errorf("body = %.40q, want %.40q", b, tt.body)
			}
		})
	}
}

func TestHandlerETag(t *testing.T) {
	h, err := NewHandler(fstest.MapFS{"index.html": {Data: []byte("a")}, "app.js": {Data: []byte("b")}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/app.js", nil))
	etag := rec.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	req := httptest.NewRequest("GET", "/app.js", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Errorf("revalidation: status %d, want 304", rec.Code)
	}
}

func TestHandlerNotBuilt(t *testing.T) {
	h, err := NewHandler(fstest.MapFS{".gitignore": {Data: []byte("*")}})
	if err != nil {
		t.Fatal(err)
	}
	if h.Built() {
		t.Fatal("Built() = true without index.html")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "make web") {
		t.Errorf("unbuilt app: status %d body %q", rec.Code, rec.Body.String())
	}
}

// TestBuild bundles the real web/ sources when npm has fetched the
// libraries (make setup); the embedded app comes from this step.
func TestBuild(t *testing.T) {
	webDir := "../../web"
	out := t.TempDir() + "/dist"
	res, err := Build(BuildOptions{WebDir: webDir, OutDir: out, Minify: true})
	if err != nil {
		if strings.Contains(err.Error(), "web libraries missing") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	want := map[string]bool{"index.html": false, "example.html": false, "app.js": false, "pgwasm.js": false, "vm-worker.js": false, "v86.wasm": false, "xterm.css": false, "app.css": false}
	for _, f := range res.Files {
		if _, ok := want[f]; ok {
			want[f] = true
		}
	}
	for f, ok := range want {
		if !ok {
			t.Errorf("build output lacks %s (got %v)", f, res.Files)
		}
	}
	h, err := NewHandler(osDirFS(out))
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/pgwasm.js", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Header().Get("Content-Encoding") != "gzip" {
		t.Errorf("pgwasm.js: status %d encoding %q", rec.Code, rec.Header().Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := io.ReadAll(zr)
	if !bytes.Contains(js, []byte("export")) || !bytes.Contains(js, []byte("boot")) {
		t.Error("pgwasm.js does not export boot")
	}
}

func osDirFS(dir string) fs.FS { return os.DirFS(dir) }

// TestHandlerCORS: only the files other origins load to embed the VM carry
// a CORS header; the page and its script do not (issue #13).
func TestHandlerCORS(t *testing.T) {
	fsys := fstest.MapFS{
		"index.html":         {Data: []byte("<!doctype html>")},
		"example.html":       {Data: []byte("<!doctype html>")},
		"app.js":             {Data: []byte("a")},
		"style.css":          {Data: []byte("b")},
		"pgwasm.js":          {Data: []byte("export function boot() {}")},
		"v86.wasm":           {Data: []byte("\x00asm")},
		"vm-worker.js":       {Data: []byte("onmessage = null")},
		"chunks/lib-ABCD.js": {Data: []byte("x")},
	}
	h, err := NewHandler(fsys)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path, acao string
	}{
		{"/", ""},
		{"/index.html", ""},
		{"/example.html", ""},
		{"/app.js", ""},
		{"/style.css", ""},
		{"/pgwasm.js", "*"},
		{"/v86.wasm", "*"},
		{"/vm-worker.js", "*"},
		{"/chunks/lib-ABCD.js", "*"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", tt.path, nil)
		req.Header.Set("Origin", "https://other.example")
		h.ServeHTTP(rec, req)
		if rec.Code != 200 || rec.Header().Get("Access-Control-Allow-Origin") != tt.acao {
			t.Errorf("GET %s = %d, ACAO %q; want 200, %q", tt.path, rec.Code, rec.Header().Get("Access-Control-Allow-Origin"), tt.acao)
		}
	}
}

func TestScriptHashes(t *testing.T) {
	tests := []struct {
		html string
		want []string
	}{
		{`<script src="app.js"></script>`, nil},
		{`<script type="module" src="./x.js">ignored</script>`, nil},
		// sha256("alert(1)"), base64; as the browser computes it.
		{`<p><script>alert(1)</script>`, []string{"'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"}},
		{"<SCRIPT type=module>\nalert(1)</script >", []string{"'sha256-cfGXBG41ZR13cBtpRr7V/KlHrRugbtbOXikzO7LFEFY='"}},
	}
	for _, tt := range tests {
		h, err := NewHandler(fstest.MapFS{"index.html": {Data: []byte(tt.html)}})
		if err != nil {
			t.Fatal(err)
		}
		if got := h.ScriptHashes(); !slices.Equal(got, tt.want) {
			t.Errorf("ScriptHashes(%q) = %q, want %q", tt.html, got, tt.want)
		}
	}
	// The embedded example page has one inline module.
	h, err := NewHandler(Assets())
	if err != nil {
		t.Fatal(err)
	}
	if h.Built() && len(h.ScriptHashes()) != 1 {
		t.Errorf("embedded app: ScriptHashes() = %q, want the example page's one", h.ScriptHashes())
	}
}
