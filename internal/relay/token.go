package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// A session token proves that this server (or one sharing its secret) made
// the session: it is the session's creation and expiry times and an
// HMAC-SHA256 over the id and those times under Config.SessionSecret. A
// server that does not know the id (it restarted, or another server made
// the session) can check the token, see when the session ends, and
// re-create it with the same id. The expiry is the issuing server's
// (creation + its Config.Lifetime), so servers with different lifetimes
// agree; a verifying server with a shorter lifetime applies its own.
//
// Layout before base32 (lowercase, no padding, 79 characters):
//
//	byte 0       version (1)
//	bytes 1-8    creation time, Unix nanoseconds, big endian
//	bytes 9-16   expiry time, Unix nanoseconds, big endian
//	bytes 17-48  HMAC-SHA256(secret, "pgwasm relay session v1\x00" id "\x00" bytes 0-16)
const (
	tokenVersion = 1
	tokenHead    = 1 + 8 + 8
	tokenLen     = tokenHead + sha256.Size
	// tokenSkew is how far in the future a creation time may be: servers
	// sharing a secret may disagree a little about the time.
	tokenSkew = 5 * time.Minute
	// MinSecretLen is the shortest Config.SessionSecret accepted.
	MinSecretLen = 16
)

// Token errors; the relay answers both with 401.
var (
	errBadToken     = errors.New("missing or wrong session token")
	errTokenExpired = errors.New("session token expired")
)

var tokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

func tokenMAC(secret []byte, id string, head []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("pgwasm relay session v1\x00"))
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write(head)
	return h.Sum(nil)
}

// mintToken makes the token of session id created at created, ending at
// expires.
func mintToken(secret []byte, id string, created, expires time.Time) string {
	b := make([]byte, tokenHead, tokenLen)
	b[0] = tokenVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(created.UnixNano()))
	binary.BigEndian.PutUint64(b[9:17], uint64(expires.UnixNano()))
	b = append(b, tokenMAC(secret, id, b[:tokenHead])...)
	return strings.ToLower(tokenEncoding.EncodeToString(b))
}

// verifyToken checks token for session id and returns the creation and
// expiry times it carries. It fails with errBadToken for anything not
// minted under secret for id, and errTokenExpired once now is past the
// expiry or created + lifetime, whichever is first.
func verifyToken(secret []byte, id, token string, now time.Time, lifetime time.Duration) (created, expires time.Time, err error) {
	up := strings.ToUpper(token)
	b, err := tokenEncoding.DecodeString(up)
	// Only the canonical spelling: base32 would also take other trailing bits.
	if err != nil || len(b) != tokenLen || b[0] != tokenVersion || tokenEncoding.EncodeToString(b) != up {
		return time.Time{}, time.Time{}, errBadToken
	}
	if !hmac.Equal(b[tokenHead:], tokenMAC(secret, id, b[:tokenHead])) {
		return time.Time{}, time.Time{}, errBadToken
	}
	created = time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9])))
	expires = time.Unix(0, int64(binary.BigEndian.Uint64(b[9:17])))
	if created.After(now.Add(tokenSkew)) {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: created %s, in the future", errBadToken, created.UTC().Format(time.RFC3339))
	}
	if ends := sessionEnd(created, expires, lifetime); !now.Before(ends) {
		return time.Time{}, time.Time{}, fmt.Errorf("%w at %s", errTokenExpired, ends.UTC().Format(time.RFC3339))
	}
	return created, expires, nil
}

// sessionEnd is when a session ends at the latest: the expiry in its token,
// or earlier if this server's lifetime is shorter.
func sessionEnd(created, expires time.Time, lifetime time.Duration) time.Time {
	if limit := created.Add(lifetime); expires.After(limit) {
		return limit
	}
	return expires
}
