package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

func TestReadLine(t *testing.T) {
	const max = 8
	tests := []struct {
		in   string
		want []string // "!" marks a line reported as too long
	}{
		{"", nil},
		{"a\n", []string{"a"}},
		{"a\nb", []string{"a", "b"}},
		{"12345678\n", []string{"12345678"}},
		{"123456789\nok\n", []string{"!", "ok"}},
		{"\n\n", []string{"", ""}},
		{strings.Repeat("x", 100) + "\nafter\n", []string{"!", "after"}},
		{strings.Repeat("x", 100), []string{"!"}},
	}
	for _, tt := range tests {
		// A small buffer makes ReadSlice fill up, as a 1 MiB line does.
		r := bufio.NewReaderSize(strings.NewReader(tt.in), 16)
		var got []string
		for {
			line, tooLong, err := readLine(r, max)
			switch {
			case tooLong:
				got = append(got, "!")
			case line != nil || err == nil:
				got = append(got, string(line))
			}
			if err != nil {
				if err != io.EOF {
					t.Fatalf("readLine(%q): %v", tt.in, err)
				}
				break
			}
		}
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("readLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFraming(t *testing.T) {
	env := &testEnv{}
	a := startAgent(t, newTestServer(t, &fakeDB{}, env))

	// A valid request padded to exactly the limit is accepted.
	pad := strings.Repeat("p", maxLine-len(`{"id":7,"op":"ping","pad":""}`))
	exact := `{"id":7,"op":"ping","pad":"` + pad + `"}`

	tests := []struct {
		name      string
		line      string
		wantID    float64
		wantOK    bool
		wantError string
	}{
		{"invalid JSON", `{"id":1,"op":`, 0, false, "invalid request"},
		{"not an object", `[1,2]`, 0, false, "not a JSON object"},
		{"null", `null`, 0, false, "not a JSON object"},
		{"too long", `{"id":2,"op":"ping","pad":"` + strings.Repeat("x", maxLine) + `"}`, 0, false, "longer than"},
		{"wrong field type", `{"id":3,"op":"query","sql":5}`, 3, false, "invalid request"},
		{"wrong id type", `{"id":"3","op":"ping"}`, 0, false, "invalid request"},
		{"no op", `{"id":4}`, 4, false, "no op"},
		{"unknown op", `{"id":5,"op":"reboot"}`, 5, false, `unknown op "reboot"`},
		{"query without sql", `{"id":6,"op":"query"}`, 6, false, "needs sql"},
		{"set_time without unix_ms", `{"id":8,"op":"set_time"}`, 8, false, "needs unix_ms"},
		{"CRLF line", "{\"id\":9,\"op\":\"status\"}\r", 9, true, ""},
		{"status", `{"id":10,"op":"status"}`, 10, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.send(tt.line)
			resp := a.recv()
			if resp["id"] != tt.wantID || resp["ok"] != tt.wantOK {
				t.Fatalf("response = %v, want id %v ok %v", resp, tt.wantID, tt.wantOK)
			}
			if e, _ := resp["error"].(string); !strings.Contains(e, tt.wantError) {
				t.Errorf("error = %q, want it to contain %q", e, tt.wantError)
			}
		})
	}

	t.Run("blank lines get no answer; ping announces itself", func(t *testing.T) {
		a.send("")
		a.send("   ")
		a.send(exact)
		if ev := a.recv(); ev["event"] != "ready" || ev["version"] != "test" {
			t.Fatalf("ping: first line = %v, want the ready event", ev)
		}
		resp := a.recv()
		if resp["id"] != float64(7) || resp["ok"] != true || resp["uptime_ms"] == nil {
			t.Fatalf("ping response = %v", resp)
		}
	})

	t.Run("set_time", func(t *testing.T) {
		mustOK(t, a.call(map[string]any{"id": 11, "op": "set_time", "unix_ms": int64(1700000000123)}))
		if len(env.clockSet) != 1 || !env.clockSet[0].Equal(time.UnixMilli(1700000000123)) {
			t.Errorf("clock set to %v, want 1700000000123 ms", env.clockSet)
		}
	})
}

// TestServeEndsOnEOF checks that the loop returns cleanly when its input
// ends, answering a final line that has no newline.
func TestServeEndsOnEOF(t *testing.T) {
	srv := newTestServer(t, &fakeDB{}, &testEnv{})
	var out bytes.Buffer
	rw := struct {
		io.Reader
		io.Writer
	}{strings.NewReader(`{"id":1,"op":"status"}` + "\n" + `{"id":2,"op":"ping"}`), &out}
	if err := srv.serve(context.Background(), rw); err != nil {
		t.Fatalf("serve: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 4 { // ready, status, ready, ping
		t.Fatalf("got %d lines, want 4:\n%s", len(lines), out.String())
	}
	if !strings.Contains(lines[3], `"id":2,"ok":true`) {
		t.Errorf("last line = %s, want the ping answer", lines[3])
	}
}

func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"op":"ping"}`,
		`{"id":2,"op":"status"}`,
		`{"id":3,"op":"query","sql":"select $1","params":["a",null]}`,
		`{"id":4,"op":"exec","sql":"select 1; select 2"}`,
		`{"id":5,"op":"set_password","user":"a\"b","password":"p"}`,
		`{"id":6,"op":"set_time","unix_ms":1700000000000}`,
		`{"id":7,"op":"net_up"}`,
		`{"id":8,"op":"net_down"}`,
		`{"id":9,"op":"prepare_snapshot"}`,
		`{"id":-1,"op":"query","sql":""}`,
		`{"id":1e400}`,
		`{"op":"query","params":[1]}`,
		"{\"op\":\"\xff\"}",
		`[]`, `null`, `{`, ``, ` `, `"x"`,
	} {
		f.Add([]byte(s))
	}
	env := &testEnv{dir: f.TempDir(), runErr: errFake}
	srv := newTestServer(f, &fakeDB{}, env)
	f.Fuzz(func(t *testing.T, line []byte) {
		if bytes.IndexByte(line, '\n') >= 0 {
			t.Skip("the framing splits lines before handleLine sees them")
		}
		env.commands = nil
		out := srv.handleLine(context.Background(), line)
		if len(bytes.TrimSpace(line)) == 0 {
			if len(out) != 0 {
				t.Fatalf("blank line answered with %v", out)
			}
			return
		}
		if len(out) == 0 {
			t.Fatal("no answer")
		}
		var req struct {
			ID int64 `json:"id"`
		}
		valid := json.Unmarshal(line, &req) == nil && bytes.TrimSpace(line)[0] == '{'
		resp, ok := out[len(out)-1].(response)
		if !ok {
			t.Fatalf("last answer is %T, want a response", out[len(out)-1])
		}
		for _, v := range out {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("answer cannot be encoded: %v", err)
			}
			if bytes.IndexByte(b, '\n') >= 0 {
				t.Fatalf("answer %s spans lines", b)
			}
		}
		if !resp.OK && resp.Error == "" {
			t.Fatalf("failed response without error: %+v", resp)
		}
		if !valid && resp.OK {
			t.Fatalf("invalid request %q answered with %+v", line, resp)
		}
		if valid && resp.ID != req.ID {
			t.Fatalf("response id %d, want %d", resp.ID, req.ID)
		}
	})
}
