package main

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/text/secure/precis"
)

const (
	scramIterations = 4096 // PostgreSQL's default scram_iterations
	scramSaltLen    = 16
)

// setPassword sets a role's password from a verifier computed here, so the
// plaintext never reaches the server, its log or pg_stat_activity.
func (s *server) setPassword(ctx context.Context, user, password string) error {
	if user == "" {
		return errors.New("set_password needs user")
	}
	if password == "" {
		return errors.New("set_password needs a non-empty password")
	}
	ident, err := quoteIdent(user)
	if err != nil {
		return err
	}
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return fmt.Errorf("cannot make salt: %w", err)
	}
	verifier, err := scramVerifier(password, salt, scramIterations)
	if err != nil {
		return err
	}
	// The verifier holds only base64, digits, '$' and ':', so the literal
	// needs no escaping.
	if _, err := s.db.Exec(ctx, "ALTER ROLE "+ident+" PASSWORD '"+verifier+"'"); err != nil {
		return fmt.Errorf("cannot set password of %s: %w", ident, err)
	}
	return nil
}

// scramVerifier returns the SCRAM-SHA-256 secret in the form PostgreSQL stores
// in pg_authid.rolpassword (RFC 5802, RFC 7677).
func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, saslPrep(password), salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("cannot derive SCRAM key: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// saslPrep normalises the password the way clients do before SCRAM, so that
// a non-ASCII password typed later by psql or pgx still matches. Like
// PostgreSQL's pg_saslprep, pure ASCII is used as is, and a password that
// SASLprep rejects is used as raw bytes.
func saslPrep(password string) string {
	ascii := true
	for i := 0; i < len(password); i++ {
		if password[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return password
	}
	p, err := precis.OpaqueString.String(password)
	if err != nil {
		return password
	}
	return p
}

// quoteIdent quotes a role name as an SQL identifier.
func quoteIdent(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("identifier contains a NUL byte")
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`, nil
}
