package relay

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestToken(t *testing.T) {
	secret := []byte("token-test-secret-0123")
	created := time.Unix(1_800_000_000, 123)
	expires := created.Add(24 * time.Hour)
	tok := mintToken(secret, "abcdefghijklmnop", created, expires)
	tests := []struct {
		name, id, token string
		secret          []byte
		now             time.Time
		lifetime        time.Duration
		wantErr         error
		wantEnds        time.Time
	}{
		{"valid", "abcdefghijklmnop", tok, secret, created.Add(time.Hour), 24 * time.Hour, nil, expires},
		{"upper case", "abcdefghijklmnop", strings.ToUpper(tok), secret, created.Add(time.Hour), 24 * time.Hour, nil, expires},
		{"shorter lifetime here", "abcdefghijklmnop", tok, secret, created.Add(time.Hour), 2 * time.Hour, nil, created.Add(2 * time.Hour)},
		{"other id", "abcdefghijklmnoq", tok, secret, created, 24 * time.Hour, errBadToken, time.Time{}},
		{"other secret", "abcdefghijklmnop", tok, []byte("another-secret-0123456"), created, 24 * time.Hour, errBadToken, time.Time{}},
		{"expired", "abcdefghijklmnop", tok, secret, expires, 48 * time.Hour, errTokenExpired, time.Time{}},
		{"expired by lifetime here", "abcdefghijklmnop", tok, secret, created.Add(3 * time.Hour), 2 * time.Hour, errTokenExpired, time.Time{}},
		{"from the future", "abcdefghijklmnop", tok, secret, created.Add(-time.Hour), 24 * time.Hour, errBadToken, time.Time{}},
		{"truncated", "abcdefghijklmnop", tok[:len(tok)-1], secret, created, 24 * time.Hour, errBadToken, time.Time{}},
		{"empty", "abcdefghijklmnop", "", secret, created, 24 * time.Hour, errBadToken, time.Time{}},
		{"not base32", "abcdefghijklmnop", strings.Repeat("!", len(tok)), secret, created, 24 * time.Hour, errBadToken, time.Time{}},
	}
	for _, tt := range tests {
		c, e, err := verifyToken(tt.secret, tt.id, tt.token, tt.now, tt.lifetime)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: verifyToken = %v, want %v", tt.name, err, tt.wantErr)
			continue
		}
		if err == nil && (!c.Equal(created) || !e.Equal(expires) || !sessionEnd(c, e, tt.lifetime).Equal(tt.wantEnds)) {
			t.Errorf("%s: verifyToken = %s, %s (ends %s), want %s, %s (ends %s)", tt.name, c, e, sessionEnd(c, e, tt.lifetime), created, expires, tt.wantEnds)
		}
	}
	if len(tok) != 79 || strings.ToLower(tok) != tok {
		t.Errorf("token %q: want 79 lowercase characters", tok)
	}
}

// FuzzVerifyToken: no input panics, and nothing but the minted token passes.
func FuzzVerifyToken(f *testing.F) {
	secret := []byte("fuzz-secret-0123456789")
	now := time.Unix(1_800_000_000, 0)
	good := mintToken(secret, "abcdefghijklmnop", now, now.Add(time.Hour))
	f.Add(good)
	f.Add("")
	f.Add(good[:10])
	f.Fuzz(func(t *testing.T, tok string) {
		_, _, err := verifyToken(secret, "abcdefghijklmnop", tok, now, time.Hour)
		if err == nil && strings.ToLower(tok) != good {
			t.Fatalf("verifyToken accepted %q", tok)
		}
	})
}
