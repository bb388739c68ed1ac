package cli

import (
	"slices"
	"strings"
	"testing"
)

func TestServeAllowedHosts(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{nil, nil, nil},
		{[]string{"--listen", "0.0.0.0:8080"}, nil, nil},
		{[]string{"--listen", ":8080"}, nil, nil},
		{[]string{"--listen", "[::1]:8080"}, nil, nil},
		{[]string{"--listen", "devbox.lan:8080"}, nil, []string{"devbox.lan"}},
		{[]string{"--allowed-hosts", "pg.example.com,*.corp.example"}, nil, []string{"pg.example.com", "*.corp.example"}},
		{nil, map[string]string{"PGWASM_ALLOWED_HOSTS": "a.example,b.example"}, []string{"a.example", "b.example"}},
		{[]string{"--listen", "devbox.lan:8080", "--allowed-hosts", "*"}, nil, []string{"*", "devbox.lan"}},
	}
	for _, tt := range tests {
		cfg, err := parseServe(t, tt.args, tt.env)
		if err != nil {
			t.Fatal(err)
		}
		p, err := cfg.parts()
		if err != nil {
			t.Fatalf("parts(%q) = %v", tt.args, err)
		}
		if !slices.Equal(p.server.AllowedHosts, tt.want) {
			t.Errorf("parts(%q, %v): AllowedHosts = %q, want %q", tt.args, tt.env, p.server.AllowedHosts, tt.want)
		}
	}
	for _, bad := range []string{"http://pg.example.com", "pg.example.com:443", "pg.example.com/x"} {
		cfg, err := parseServe(t, []string{"--allowed-hosts", bad}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cfg.parts(); err == nil || !strings.Contains(err.Error(), "allowed-hosts") {
			t.Errorf("parts(--allowed-hosts %s) = %v, want an error about allowed-hosts", bad, err)
		}
	}
}
