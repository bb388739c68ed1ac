package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// encodeJSON is how the agent encoded every message before appendPart.
func encodeJSON(t testing.TB, v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestAppendPart(t *testing.T) {
	strs := []string{"", "plain", `quote " and \ backslash`, "new\nline\r\ttab", "\x00\x01\x1f\x7f",
		"<html> & ünïcödé 😀", "\u2028\u2029", "bad \xff\xfe utf-8 \xe2\x82", strings.Repeat("x", 5000)}
	var rows [][]*string
	for i := range strs {
		rows = append(rows, []*string{&strs[i], nil, &strs[len(strs)-1-i]})
	}
	for _, p := range []part{
		{ID: 7, More: true, Statement: 2, Columns: []column{{Name: `a"b`, Type: "text", TypeOID: 25}}, Rows: rows},
		{ID: 1, More: true, Rows: [][]*string{}},
		{ID: 1, More: true, Rows: [][]*string{nil, {}}},
		{ID: 1, More: true},
	} {
		got, err := appendPart(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		if want := encodeJSON(t, p); !bytes.Equal(got, want) {
			t.Errorf("appendPart:\n got %s\nwant %s", got, want)
		}
	}
}

func benchRows() [][]*string {
	rows := make([][]*string, 10000)
	for i := range rows {
		s := strings.Repeat("x", 100)
		rows[i] = []*string{&s}
	}
	return rows
}

// A 1 MB result's rows (the bench's 10,000 rows of 100 bytes), natively:
// a proxy for the instructions the emulated agent spends on them.
func BenchmarkEncodeRowsJSON(b *testing.B) {
	p := part{ID: 1, More: true, Rows: benchRows()}
	for b.Loop() {
		encodeJSON(b, p)
	}
}

func BenchmarkEncodeRowsAppend(b *testing.B) {
	p := part{ID: 1, More: true, Rows: benchRows()}
	var buf []byte
	for b.Loop() {
		buf, _ = appendPart(buf[:0], p)
	}
}
