// Package servetest starts `pgwasm serve` as a process (Start: the one way
// tests and the bench do) and talks to it as a page does (CreateSession).
// In-process tests build the same server with internal/stack. It is apart
// from testkit because it imports the server, which the tunnel's own tests
// (users of testkit) cannot.
package servetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

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
