package auth_test

import (
	"context"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/threadbus/threadbus/auth"
)

// BenchmarkVerify is the cost of one handshake's verification per key type.
func BenchmarkVerify(b *testing.B) {
	k := getKeys(b)
	now := time.Now()
	cases := []struct {
		name   string
		cfg    auth.JWTConfig
		method jwt.SigningMethod
		key    any
	}{
		{"HS256", auth.JWTConfig{Secret: secret}, jwt.SigningMethodHS256, secret},
		{"RS256", auth.JWTConfig{PublicKeyPEM: pemPublic(b, &k.rsa.PublicKey)}, jwt.SigningMethodRS256, k.rsa},
		{"ES256", auth.JWTConfig{PublicKeyPEM: pemPublic(b, &k.p256.PublicKey)}, jwt.SigningMethodES256, k.p256},
		{"EdDSA", auth.JWTConfig{PublicKeyPEM: pemPublic(b, k.ed.Public())}, jwt.SigningMethodEdDSA, k.ed},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			v, err := auth.NewJWTVerifier(context.Background(), c.cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			tok := sign(b, c.method, c.key, claimsAt(now), "")
			ctx := context.Background()
			for b.Loop() {
				if _, err := v.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCacheHit is the cost of an allowed pair answered from the cache.
func BenchmarkCacheHit(b *testing.B) {
	c := auth.NewCache(&hook{decide: allowAll(0)}, time.Hour)
	ctx := context.Background()
	r := req("u-42", "thread_ab12")
	if _, err := c.Authorize(ctx, r); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := c.Authorize(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}
