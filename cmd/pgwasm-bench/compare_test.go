package main

import (
	"strings"
	"testing"
)

func TestParsePgbench(t *testing.T) {
	for _, tc := range []struct {
		out      string
		tps, lat float64
		ok       bool
	}{
		{"latency average = 12.215 ms\ninitial connection time = 300.1 ms\ntps = 81.864106 (without initial connection time)\n", 81.864106, 12.215, true},
		{"tps = 22592.2 (without initial connection time)\n", 22592.2, 0, true},
		{"pgbench: error: connection refused\n", 0, 0, false},
	} {
		tps, lat, ok := parsePgbench(tc.out)
		if tps != tc.tps || lat != tc.lat || ok != tc.ok {
			t.Errorf("parsePgbench(%q) = %v, %v, %v, want %v, %v, %v", tc.out, tps, lat, ok, tc.tps, tc.lat, tc.ok)
		}
	}
}

// The query set the bench ships expands as bench/pglite.mjs expands it.
func TestQuerySpec(t *testing.T) {
	spec, err := loadQuerySpec("../../bench/queries.json")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for i, q := range spec.Queries {
		names[q.Name] = true
		sql, script := spec.sql(i)
		if q.Name == "insert10k" {
			if !script || strings.Count(sql, "insert into") != 10000 || !strings.HasPrefix(sql, "begin;") || !strings.HasSuffix(sql, "commit;\n") {
				t.Errorf("insert10k: script=%v, %d inserts", script, strings.Count(sql, "insert into"))
			}
			if !strings.Contains(sql, "values (10000, 'row 10000')") {
				t.Errorf("insert10k: {i} not expanded")
			}
		} else if script || sql == "" {
			t.Errorf("%s: script=%v sql=%q", q.Name, script, sql)
		}
	}
	for _, want := range []string{"select1", "insert1", "insert10k", "count1m", "lookup", "joinsort"} {
		if !names[want] {
			t.Errorf("query set has no %s", want)
		}
	}
}

func TestPgbenchCaseArgs(t *testing.T) {
	for _, tc := range []struct {
		c    pgbenchCase
		key  string
		args string
		env  string
	}{
		{pgbenchCase{"select-only", 4, ""}, "select-only/4", "-n -c 4 -j 4 -T 10 -S", ""},
		{pgbenchCase{"tpcb-like", 4, "prepared"}, "tpcb-like/4/prepared", "-n -c 4 -j 4 -T 10 -M prepared", ""},
		{pgbenchCase{"tpcb-like", 4, "async"}, "tpcb-like/4/async", "-n -c 4 -j 4 -T 10", "PGOPTIONS=-c synchronous_commit=off"},
	} {
		args, env := tc.c.args(10)
		if got := tc.c.key(); got != tc.key {
			t.Errorf("key = %q, want %q", got, tc.key)
		}
		if got := strings.Join(args, " "); got != tc.args {
			t.Errorf("%s: args = %q, want %q", tc.key, got, tc.args)
		}
		if got := strings.Join(env, " "); got != tc.env {
			t.Errorf("%s: env = %q, want %q", tc.key, got, tc.env)
		}
	}
}
