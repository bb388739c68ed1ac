package main

import (
	"errors"
	"fmt"
	"testing"
)

// The postmaster's refusals (postmaster.c, canAcceptConnections) all carry
// SQLSTATE 57P03; only crash recovery may be reported as "recovering".
func TestInRecovery(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&pgError{Code: "57P03", Message: "the database system is in recovery mode"}, true},
		{&pgError{Code: "57P03", Message: "the database system is not yet accepting connections", Detail: "Consistent recovery state has not been yet reached."}, true},
		{fmt.Errorf("dial: %w", &pgError{Code: "57P03", Message: "the database system is in recovery mode"}), true},
		{&pgError{Code: "57P03", Message: "the database system is starting up"}, false},
		{&pgError{Code: "57P03", Message: "the database system is shutting down"}, false},
		{&pgError{Code: "53300", Message: "sorry, too many clients already"}, false},
		{errors.New("dial unix /var/run/postgresql/.s.PGSQL.5432: connect: no such file or directory"), false},
	}
	for _, tt := range tests {
		if got := inRecovery(tt.err); got != tt.want {
			t.Errorf("inRecovery(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestStatusReportsRecovery(t *testing.T) {
	for _, tt := range []struct {
		state dbState
		want  string
	}{
		{dbState{Ready: true, Version: "17.12"}, "ready"},
		{dbState{Recovering: true, Err: "the database system is in recovery mode (SQLSTATE 57P03)"}, "recovering"},
		{dbState{Err: "the database system is starting up (SQLSTATE 57P03)"}, "starting"},
	} {
		srv := newTestServer(t, &fakeDB{state: &tt.state}, &testEnv{})
		a := startAgent(t, srv)
		resp := a.call(map[string]any{"id": 1, "op": "status"})
		if resp["ok"] != true || resp["postgres"] != tt.want {
			t.Errorf("status with %+v = %v, want postgres %q", tt.state, resp, tt.want)
		}
		if !tt.state.Ready && resp["postgres_error"] != tt.state.Err {
			t.Errorf("status with %+v: postgres_error = %v", tt.state, resp["postgres_error"])
		}
	}
}
