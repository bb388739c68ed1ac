package deb

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

func TestMirrorFromHost(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
		err   bool
	}{
		{
			name: "deb822 skips security and third-party",
			files: map[string]string{"sources.list.d/debian.sources": `Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
# a comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
`, "sources.list.d/other.list": "deb https://vendor.example/apt stable main\n"},
			want: "http://mirror.example/debian",
		},
		{
			name:  "one-line format with options",
			files: map[string]string{"sources.list": "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian trixie main contrib\n"},
			want:  "http://m.example/debian",
		},
		{
			name: "disabled paragraph is ignored",
			files: map[string]string{"sources.list.d/d.sources": `Types: deb
URIs: http://off.example/debian
Suites: bookworm
Components: main
Enabled: no
`},
			err: true,
		},
		{
			name:  "deb-src only",
			files: map[string]string{"sources.list": "deb-src http://m.example/debian bookworm main\n"},
			err:   true,
		},
		{name: "no sources", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := MirrorFromHost(dir)
			if tt.err {
				if err == nil {
					t.Fatalf("MirrorFromHost() = %q, want an error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("MirrorFromHost() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestDebFileName(t *testing.T) {
	p := Package{Package: manifest.Package{Name: "busybox-static", Version: "1:1.37.0-6+b9", Arch: "i386"}}
	if got, want := debFileName(p), "busybox-static_1%3a1.37.0-6+b9_i386.deb"; got != want {
		t.Fatalf("debFileName() = %q, want %q", got, want)
	}
}

func TestVerifyFileRejectsCorruptDownload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.deb")
	os.WriteFile(path, []byte("not a deb"), 0o644)
	err := VerifyFile(path, strings.Repeat("0", 64))
	if err == nil || !strings.Contains(err.Error(), "corrupt download") {
		t.Fatalf("VerifyFile() = %v, want a corrupt download error", err)
	}
}
