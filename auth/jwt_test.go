package auth_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/threadbus/threadbus/auth"
)

func newVerifier(t *testing.T, cfg auth.JWTConfig) *auth.JWTVerifier {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return testNow }
	}
	v, err := auth.NewJWTVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewJWTVerifier: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// TestVerifyKeyTypes: each key source accepts what its key signs, with the
// user, claims and expiry of the token.
func TestVerifyKeyTypes(t *testing.T) {
	k := getKeys(t)
	rsaPKCS1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})
	tests := []struct {
		name   string
		cfg    auth.JWTConfig
		method jwt.SigningMethod
		key    any
	}{
		{"HS256", auth.JWTConfig{Secret: secret}, jwt.SigningMethodHS256, secret},
		{"HS384", auth.JWTConfig{Secret: secret}, jwt.SigningMethodHS384, secret},
		{"HS512", auth.JWTConfig{Secret: secret}, jwt.SigningMethodHS512, secret},
		{"RS256", auth.JWTConfig{PublicKeyPEM: pemPublic(t, &k.rsa.PublicKey)}, jwt.SigningMethodRS256, k.rsa},
		{"RS256 PKCS1 PEM", auth.JWTConfig{PublicKeyPEM: rsaPKCS1}, jwt.SigningMethodRS256, k.rsa},
		{"PS256", auth.JWTConfig{PublicKeyPEM: pemPublic(t, &k.rsa.PublicKey)}, jwt.SigningMethodPS256, k.rsa},
		{"ES256", auth.JWTConfig{PublicKeyPEM: pemPublic(t, &k.p256.PublicKey)}, jwt.SigningMethodES256, k.p256},
		{"ES384", auth.JWTConfig{PublicKeyPEM: pemPublic(t, &k.p384.PublicKey)}, jwt.SigningMethodES384, k.p384},
		{"EdDSA", auth.JWTConfig{PublicKeyPEM: pemPublic(t, k.ed.Public())}, jwt.SigningMethodEdDSA, k.ed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, tt.cfg)
			c := claimsAt(testNow)
			c["role"] = "admin"
			id, err := v.Verify(context.Background(), sign(t, tt.method, tt.key, c, ""))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.User != "u-42" || id.Claims["role"] != "admin" || !id.Expires.Equal(testNow.Add(time.Hour)) {
				t.Fatalf("Verify = %+v; want user u-42, role admin, expires %v", id, testNow.Add(time.Hour))
			}
		})
	}
}

// TestVerifyFailures: every way a token is refused, with the sentinel it
// wraps, and never with the token in the message.
func TestVerifyFailures(t *testing.T) {
	k := getKeys(t)
	rsaPEM := pemPublic(t, &k.rsa.PublicKey)
	hmacV := auth.JWTConfig{Secret: secret}
	rsaV := auth.JWTConfig{PublicKeyPEM: rsaPEM}
	with := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := claimsAt(testNow)
		mod(c)
		return c
	}
	hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, secret, c, "") }
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claimsAt(testNow), "")
	tampered := func() string {
		good := hs(claimsAt(testNow))
		parts := strings.Split(good, ".")
		other := strings.Split(hs(with(func(c jwt.MapClaims) { c["sub"] = "admin" })), ".")
		return parts[0] + "." + other[1] + "." + parts[2]
	}()

	tests := []struct {
		name  string
		cfg   auth.JWTConfig
		token string
		want  error
		msg   string // in the error
	}{
		{"bad signature", hmacV, sign(t, jwt.SigningMethodHS256, []byte("another secret, also 32 bytes...."), claimsAt(testNow), ""), auth.ErrInvalidToken, "bad signature"},
		{"payload swapped", hmacV, tampered, auth.ErrInvalidToken, "bad signature"},
		{"alg none on HMAC", hmacV, none, auth.ErrInvalidToken, "not allowed"},
		{"alg none on RSA", rsaV, none, auth.ErrInvalidToken, "not allowed"},
		// The classic confusion: the RSA public key's PEM, which is public,
		// used as an HMAC secret.
		{"HS256 signed with the RSA PEM", rsaV, sign(t, jwt.SigningMethodHS256, rsaPEM, claimsAt(testNow), ""), auth.ErrInvalidToken, "not allowed"},
		{"RS256 by another key", rsaV, sign(t, jwt.SigningMethodRS256, k.rsa2, claimsAt(testNow), ""), auth.ErrInvalidToken, "bad signature"},
		{"ES256 on RSA", rsaV, sign(t, jwt.SigningMethodES256, k.p256, claimsAt(testNow), ""), auth.ErrInvalidToken, "not allowed"},
		{"ES384 on a P-256 key", auth.JWTConfig{PublicKeyPEM: pemPublic(t, &k.p256.PublicKey)}, sign(t, jwt.SigningMethodES384, k.p384, claimsAt(testNow), ""), auth.ErrInvalidToken, "not allowed"},
		{"RS256 on HMAC", hmacV, sign(t, jwt.SigningMethodRS256, k.rsa, claimsAt(testNow), ""), auth.ErrInvalidToken, "not allowed"},
		{"expired", hmacV, hs(with(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-time.Hour).Unix() })), auth.ErrTokenExpired, "expired"},
		{"not yet valid", hmacV, hs(with(func(c jwt.MapClaims) { c["nbf"] = testNow.Add(time.Hour).Unix() })), auth.ErrInvalidToken, "not valid yet"},
		{"no exp", hmacV, hs(with(func(c jwt.MapClaims) { delete(c, "exp") })), auth.ErrInvalidToken, "missing a required claim"},
		{"exp not a number", hmacV, hs(with(func(c jwt.MapClaims) { c["exp"] = "tomorrow" })), auth.ErrInvalidToken, "wrong type"},
		{"wrong iss", auth.JWTConfig{Secret: secret, Issuer: "https://idp"}, hs(with(func(c jwt.MapClaims) { c["iss"] = "https://evil" })), auth.ErrInvalidToken, "wrong issuer"},
		{"no iss", auth.JWTConfig{Secret: secret, Issuer: "https://idp"}, hs(claimsAt(testNow)), auth.ErrInvalidToken, "required claim"},
		{"wrong aud", auth.JWTConfig{Secret: secret, Audience: "threadbus"}, hs(with(func(c jwt.MapClaims) { c["aud"] = []string{"other", "more"} })), auth.ErrInvalidToken, "wrong audience"},
		{"no aud", auth.JWTConfig{Secret: secret, Audience: "threadbus"}, hs(claimsAt(testNow)), auth.ErrInvalidToken, "required claim"},
		// Expired and wrong in another way: a fresh token would not help.
		{"expired and wrong iss", auth.JWTConfig{Secret: secret, Issuer: "https://idp"}, hs(with(func(c jwt.MapClaims) {
			c["iss"] = "https://evil"
			c["exp"] = testNow.Add(-time.Hour).Unix()
		})), auth.ErrInvalidToken, "wrong issuer"},
		{"no sub", hmacV, hs(with(func(c jwt.MapClaims) { delete(c, "sub") })), auth.ErrInvalidToken, `no "sub" claim`},
		{"empty sub", hmacV, hs(with(func(c jwt.MapClaims) { c["sub"] = "" })), auth.ErrInvalidToken, "empty user id"},
		{"numeric sub", hmacV, hs(with(func(c jwt.MapClaims) { c["sub"] = 42 })), auth.ErrInvalidToken, "not a string"},
		{"sub with a newline", hmacV, hs(with(func(c jwt.MapClaims) { c["sub"] = "u-42\r\nThreadbus-User: admin" })), auth.ErrInvalidToken, "control character"},
		{"sub with spaces around", hmacV, hs(with(func(c jwt.MapClaims) { c["sub"] = " admin" })), auth.ErrInvalidToken, "space"},
		{"sub too long", hmacV, hs(with(func(c jwt.MapClaims) { c["sub"] = strings.Repeat("u", auth.MaxUserBytes+1) })), auth.ErrInvalidToken, "over 256 bytes"},
		{"custom claim missing", auth.JWTConfig{Secret: secret, UserClaim: "uid"}, hs(claimsAt(testNow)), auth.ErrInvalidToken, `no "uid" claim`},
		{"garbage", hmacV, "not.a.token", auth.ErrInvalidToken, "malformed"},
		{"two parts", hmacV, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0", auth.ErrInvalidToken, "malformed"},
		{"unknown alg", hmacV, "eyJhbGciOiJYWDEyMyIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1LTQyIn0.c2ln", auth.ErrInvalidToken, "unknown signing algorithm"},
		{"empty", hmacV, "", auth.ErrNoToken, "no token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, tt.cfg)
			id, err := v.Verify(context.Background(), tt.token)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %+v, %v; want an error wrapping %v", id, err, tt.want)
			}
			if tt.want != auth.ErrTokenExpired && errors.Is(err, auth.ErrTokenExpired) {
				t.Fatalf("Verify: %v; want it not to wrap ErrTokenExpired", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Verify: %q; want it to say %q", err, tt.msg)
			}
			noTokenIn(t, err.Error(), tt.token)
		})
	}
}

// TestVerifyLeeway: exp and nbf are checked with the leeway, 30s by default.
func TestVerifyLeeway(t *testing.T) {
	hs := func(claims jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, secret, claims, "") }
	at := func(exp, nbf time.Duration) string {
		c := claimsAt(testNow)
		c["exp"] = testNow.Add(exp).Unix()
		if nbf != 0 {
			c["nbf"] = testNow.Add(nbf).Unix()
		}
		return hs(c)
	}
	tests := []struct {
		name   string
		leeway time.Duration
		token  string
		want   error
	}{
		{"expired 10s ago, default leeway", 0, at(-10*time.Second, 0), nil},
		{"expired 40s ago, default leeway", 0, at(-40*time.Second, 0), auth.ErrTokenExpired},
		{"nbf in 10s, default leeway", 0, at(time.Hour, 10*time.Second), nil},
		{"nbf in 40s, default leeway", 0, at(time.Hour, 40*time.Second), auth.ErrInvalidToken},
		{"expired 40s ago, leeway 1m", time.Minute, at(-40*time.Second, 0), nil},
		{"expired 2s ago, no leeway", -1, at(-2*time.Second, 0), auth.ErrTokenExpired},
		{"nbf in 2s, no leeway", -1, at(time.Hour, 2*time.Second), auth.ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, auth.JWTConfig{Secret: secret, Leeway: tt.leeway})
			_, err := v.Verify(context.Background(), tt.token)
			if tt.want == nil && err != nil || !errors.Is(err, tt.want) {
				t.Fatalf("Verify: %v; want %v", err, tt.want)
			}
		})
	}
	if got := newVerifier(t, auth.JWTConfig{Secret: secret}).Leeway(); got != 30*time.Second {
		t.Errorf("default Leeway() = %v; want 30s", got)
	}
}

// TestVerifyUserClaim: the user id can come from another claim.
func TestVerifyUserClaim(t *testing.T) {
	v := newVerifier(t, auth.JWTConfig{Secret: secret, UserClaim: "uid", Issuer: "https://idp", Audience: "threadbus"})
	c := claimsAt(testNow)
	c["uid"] = "user-7"
	c["iss"] = "https://idp"
	c["aud"] = []string{"other", "threadbus"}
	id, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, secret, c, ""))
	if err != nil || id.User != "user-7" {
		t.Fatalf("Verify = %+v, %v; want user-7", id, err)
	}
}

// TestNewJWTVerifierConfig: configurations that cannot verify safely are
// refused at start.
func TestNewJWTVerifierConfig(t *testing.T) {
	k := getKeys(t)
	privDER, err := x509.MarshalPKCS8PrivateKey(k.p256)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  auth.JWTConfig
		msg  string
	}{
		{"no key source", auth.JWTConfig{}, "exactly one key source"},
		{"two key sources", auth.JWTConfig{Secret: secret, PublicKeyPEM: pemPublic(t, &k.rsa.PublicKey)}, "exactly one key source"},
		{"short secret", auth.JWTConfig{Secret: []byte("short")}, "at least 32"},
		{"not PEM", auth.JWTConfig{PublicKeyPEM: []byte("hello")}, "no PEM block"},
		{"private key PEM", auth.JWTConfig{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})}, "never a private key"},
		{"bad PUBLIC KEY", auth.JWTConfig{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")})}, "PEM key"},
		{"JWKS unreachable", auth.JWTConfig{JWKSURL: "http://127.0.0.1:1/jwks.json", JWKSTimeout: time.Second}, "JWK Set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := auth.NewJWTVerifier(context.Background(), tt.cfg)
			if err == nil {
				v.Close()
				t.Fatalf("NewJWTVerifier succeeded; want an error saying %q", tt.msg)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("NewJWTVerifier: %v; want it to say %q", err, tt.msg)
			}
		})
	}
}

// TestMintHS256: a minted token verifies, with its claims; sub, iat and exp
// are the minter's.
func TestMintHS256(t *testing.T) {
	tok, err := auth.MintHS256(secret, "u-42", time.Hour, map[string]any{"role": "admin", "sub": "root", "exp": 1}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, auth.JWTConfig{Secret: secret})
	id, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if id.User != "u-42" || id.Claims["role"] != "admin" || !id.Expires.Equal(testNow.Add(time.Hour)) || id.Claims["iat"] != float64(testNow.Unix()) {
		t.Fatalf("Verify = %+v", id)
	}
	for _, bad := range []struct {
		secret []byte
		user   string
		ttl    time.Duration
	}{{[]byte("short"), "u", time.Hour}, {secret, "", time.Hour}, {secret, "a\nb", time.Hour}, {secret, "u", 0}} {
		if _, err := auth.MintHS256(bad.secret, bad.user, bad.ttl, nil, testNow); err == nil {
			t.Errorf("MintHS256(%q, %q, %v) succeeded; want an error", bad.secret, bad.user, bad.ttl)
		}
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ content, want string }{
		{"s3cret\n", "s3cret"},
		{"s3cret\r\n", "s3cret"},
		{"s3cret", "s3cret"},
		{"s3cret\n\n", "s3cret\n"},
		{" s3cret ", " s3cret "},
		{"\n", ""},
	}
	for i, tt := range tests {
		path := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := auth.ReadSecretFile(path)
		if tt.want == "" {
			if err == nil {
				t.Errorf("ReadSecretFile(%q) = %q; want an error", tt.content, got)
			}
			continue
		}
		if err != nil || string(got) != tt.want {
			t.Errorf("ReadSecretFile(%q) = %q, %v; want %q", tt.content, got, err, tt.want)
		}
	}
	if _, err := auth.ReadSecretFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadSecretFile(missing) succeeded")
	}
}
