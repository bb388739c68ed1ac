// Package servetest starts `pgwasm serve` as a process (Start: the one way
// tests and the bench do) and talks to it as a page does (CreateSession).
// In-process tests build the same server with internal/stack. It is apart
// from testkit because it imports the server, which the tunnel's own tests
// (users of testkit) cannot.
package servetest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/pgwasm/pgwasm/internal/server"
)

// maxAnswer bounds what is read of an answer: a session is a few hundred
// bytes, and an error page is shown, not parsed.
const maxAnswer = 1 << 20

// CreateSession posts to baseURL's /api/sessions and returns the session
// the server describes, with its token.
func CreateSession(ctx context.Context, baseURL string) (*server.SessionInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/api/sessions", nil)
	if err != nil {
		return nil, fmt.Errorf("POST /api/sessions: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("POST /api/sessions: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("POST /api/sessions: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("POST /api/sessions: %s: %s", resp.Status, body)
	}
	var se server.SessionInfo
	if err := json.Unmarshal(body, &se); err != nil {
		return nil, fmt.Errorf("POST /api/sessions: %w: %s", err, body)
	}
	if se.ID == "" || se.Token == "" || se.RelayURL == "" {
		return nil, fmt.Errorf("POST /api/sessions: no id, token or relay URL in %s", body)
	}
	return &se, nil
}

// Metric returns the value of series (a metric name with its labels, as
// /metrics prints it, e.g. `pgwasm_relay_websockets`) from the server at
// base; "" when the server does not report it.
func Metric(ctx context.Context, base, series string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("GET /metrics: %w", err)
	}
	return "", nil
}
