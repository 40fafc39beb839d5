package auth

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MintHS256 signs a token for user with an HMAC secret, for trying things
// out and for tests: sub is user, iat is now and exp is now plus ttl. claims
// are added first, so sub, iat and exp cannot be overridden by them.
func MintHS256(secret []byte, user string, ttl time.Duration, claims map[string]any, now time.Time) (string, error) {
	if len(secret) < MinHMACSecretBytes {
		return "", fmt.Errorf("mint token: HMAC secret is %d bytes, at least %d are needed", len(secret), MinHMACSecretBytes)
	}
	if err := ValidateUser(user); err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	if ttl <= 0 {
		return "", errors.New("mint token: ttl must be positive")
	}
	c := jwt.MapClaims{}
	maps.Copy(c, claims)
	c["sub"] = user
	c["iat"] = jwt.NewNumericDate(now)
	c["exp"] = jwt.NewNumericDate(now.Add(ttl))
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return s, nil
}
