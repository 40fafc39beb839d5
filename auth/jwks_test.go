package auth_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/threadbus/threadbus/auth"
)

// jwksServer serves a JWK Set that a test changes, and counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []jwkset.JWK
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		store := jwkset.NewMemoryStorage()
		s.mu.Lock()
		for _, k := range s.keys {
			if err := store.KeyWrite(r.Context(), k); err != nil {
				t.Error(err)
			}
		}
		s.mu.Unlock()
		body, err := store.JSONPublic(r.Context())
		if err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// serve replaces the set with keys, each given as (kid, alg, public key).
func (s *jwksServer) serve(t *testing.T, keys ...jwkEntry) {
	t.Helper()
	var set []jwkset.JWK
	for _, k := range keys {
		j, err := jwkset.NewJWKFromKey(k.pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: jwkset.ALG(k.alg)}})
		if err != nil {
			t.Fatalf("JWK %s: %v", k.kid, err)
		}
		set = append(set, j)
	}
	s.mu.Lock()
	s.keys = set
	s.mu.Unlock()
}

type jwkEntry struct {
	kid, alg string
	pub      any
}

func jwksVerifier(t *testing.T, url string, cfg auth.JWTConfig) *auth.JWTVerifier {
	t.Helper()
	cfg.JWKSURL = url
	return newVerifier(t, cfg)
}

// TestJWKSRotation: a token signed with a new kid is accepted once the
// endpoint serves it, without restarting the verifier, and a key the set
// drops stops verifying.
func TestJWKSRotation(t *testing.T) {
	k := getKeys(t)
	s := newJWKSServer(t)
	s.serve(t, jwkEntry{"A", "RS256", &k.rsa.PublicKey})
	v := jwksVerifier(t, s.URL, auth.JWTConfig{JWKSUnknownKIDInterval: time.Millisecond})
	ctx := context.Background()

	tokA := sign(t, jwt.SigningMethodRS256, k.rsa, claimsAt(testNow), "A")
	if id, err := v.Verify(ctx, tokA); err != nil || id.User != "u-42" {
		t.Fatalf("Verify(kid A) = %+v, %v", id, err)
	}
	tokB := sign(t, jwt.SigningMethodEdDSA, k.ed, claimsAt(testNow), "B")
	_, err := v.Verify(ctx, tokB)
	if !errors.Is(err, auth.ErrInvalidToken) || !strings.Contains(err.Error(), "kid not in the JWK Set") {
		t.Fatalf("Verify(kid B) before B is served: %v; want kid not in the set", err)
	}
	noTokenIn(t, err.Error(), tokB)

	s.serve(t, jwkEntry{"A", "RS256", &k.rsa.PublicKey}, jwkEntry{"B", "EdDSA", k.ed.Public()})
	waitFor(t, "kid B to verify", func() bool {
		_, err := v.Verify(ctx, tokB)
		return err == nil
	})

	s.serve(t, jwkEntry{"B", "EdDSA", k.ed.Public()})
	// A is still known until the set is fetched again: make that happen
	// with a token of yet another kid.
	tokC := sign(t, jwt.SigningMethodRS256, k.rsa, claimsAt(testNow), "C")
	waitFor(t, "kid A to be dropped", func() bool {
		_, _ = v.Verify(ctx, tokC)
		_, err := v.Verify(ctx, tokA)
		return errors.Is(err, auth.ErrInvalidToken)
	})
}

// TestJWKSPeriodicRefresh: the set is fetched again on schedule, so a
// rotation is seen even when no unknown kid asks for it.
func TestJWKSPeriodicRefresh(t *testing.T) {
	k := getKeys(t)
	s := newJWKSServer(t)
	s.serve(t, jwkEntry{"A", "ES256", &k.p256.PublicKey})
	v := jwksVerifier(t, s.URL, auth.JWTConfig{JWKSRefreshInterval: 20 * time.Millisecond, JWKSUnknownKIDInterval: time.Hour})
	s.serve(t, jwkEntry{"B", "ES256", &k.p256.PublicKey})
	before := s.fetches.Load()
	waitFor(t, "two more fetches", func() bool { return s.fetches.Load() >= before+2 })
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodES256, k.p256, claimsAt(testNow), "B")); err != nil {
		t.Fatalf("Verify(kid B) after the refresh: %v", err)
	}
}

// TestJWKSUnknownKIDRateLimit: made-up kids cause one fetch per interval,
// not one per token.
func TestJWKSUnknownKIDRateLimit(t *testing.T) {
	k := getKeys(t)
	s := newJWKSServer(t)
	s.serve(t, jwkEntry{"A", "RS256", &k.rsa.PublicKey})
	v := jwksVerifier(t, s.URL, auth.JWTConfig{JWKSUnknownKIDInterval: time.Hour})
	if n := s.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches at start; want 1", n)
	}
	for i := range 20 {
		tok := sign(t, jwt.SigningMethodRS256, k.rsa, claimsAt(testNow), "made-up-"+string(rune('a'+i)))
		if _, err := v.Verify(context.Background(), tok); !errors.Is(err, auth.ErrInvalidToken) {
			t.Fatalf("Verify(made-up kid): %v; want ErrInvalidToken", err)
		}
	}
	if n := s.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after 20 unknown kids; want 2 (start, and one for the unknown kids)", n)
	}
}

// TestJWKSKeyChecks: the token's alg must suit the JWK's type and equal its
// alg; the kid is required; HMAC is never accepted from a JWK Set.
func TestJWKSKeyChecks(t *testing.T) {
	k := getKeys(t)
	s := newJWKSServer(t)
	s.serve(t,
		jwkEntry{"rsa-rs256", "RS256", &k.rsa.PublicKey},
		jwkEntry{"rsa-any", "", &k.rsa.PublicKey},
		jwkEntry{"ec", "", &k.p256.PublicKey},
	)
	v := jwksVerifier(t, s.URL, auth.JWTConfig{JWKSUnknownKIDInterval: time.Hour})
	rsaPEM := pemPublic(t, &k.rsa.PublicKey)
	tests := []struct {
		name  string
		token string
		msg   string // empty: accepted
	}{
		{"RS256 on an RS256 JWK", sign(t, jwt.SigningMethodRS256, k.rsa, claimsAt(testNow), "rsa-rs256"), ""},
		{"PS256 on an RS256 JWK", sign(t, jwt.SigningMethodPS256, k.rsa, claimsAt(testNow), "rsa-rs256"), "is for RS256, not PS256"},
		{"PS384 on an RSA JWK without alg", sign(t, jwt.SigningMethodPS384, k.rsa, claimsAt(testNow), "rsa-any"), ""},
		{"ES256 on an RSA JWK", sign(t, jwt.SigningMethodES256, k.p256, claimsAt(testNow), "rsa-any"), "does not verify ES256"},
		{"ES384 on a P-256 JWK", sign(t, jwt.SigningMethodES384, k.p384, claimsAt(testNow), "ec"), "does not verify ES384"},
		{"HS256 with the RSA PEM", sign(t, jwt.SigningMethodHS256, rsaPEM, claimsAt(testNow), "rsa-any"), "not allowed"},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claimsAt(testNow), "rsa-any"), "not allowed"},
		{"no kid", sign(t, jwt.SigningMethodRS256, k.rsa, claimsAt(testNow), ""), "no kid"},
		{"RS256 by another key", sign(t, jwt.SigningMethodRS256, k.rsa2, claimsAt(testNow), "rsa-rs256"), "bad signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tt.token)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, auth.ErrInvalidToken) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Verify: %v; want ErrInvalidToken saying %q", err, tt.msg)
			}
			noTokenIn(t, err.Error(), tt.token)
		})
	}
}

// TestJWKSClose: Close is idempotent and waits for the refresh goroutine,
// even while it fetches (goleak checks), and a verifier closed does not
// fetch any more.
func TestJWKSClose(t *testing.T) {
	k := getKeys(t)
	s := newJWKSServer(t)
	s.serve(t, jwkEntry{"A", "RS256", &k.rsa.PublicKey})
	busy, err := auth.NewJWTVerifier(context.Background(), auth.JWTConfig{JWKSURL: s.URL, JWKSRefreshInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "scheduled fetches", func() bool { return s.fetches.Load() >= 3 })
	busy.Close()
	busy.Close()

	// A quiet verifier, so that no fetch is under way when it closes: the
	// server could count a cancelled one after Close returns.
	quiet, err := auth.NewJWTVerifier(context.Background(), auth.JWTConfig{JWKSURL: s.URL, JWKSUnknownKIDInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodRS256, k.rsa, claimsAt(testNow), "unknown")
	n := s.fetches.Load()
	if _, err := quiet.Verify(context.Background(), tok); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("Verify(unknown kid): %v; want ErrInvalidToken", err)
	}
	if got := s.fetches.Load(); got != n+1 {
		t.Fatalf("%d fetches for an unknown kid; want 1", got-n)
	}
	quiet.Close()
	quiet.Close()
	if _, err := quiet.Verify(context.Background(), tok); !errors.Is(err, auth.ErrInvalidToken) || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Verify(unknown kid) after Close: %v; want ErrInvalidToken saying the verifier is closed", err)
	}
	if got := s.fetches.Load(); got != n+1 {
		t.Fatalf("%d fetches after Close; want none", got-n-1)
	}
}

// TestJWKSRotationStorm: many clients arriving at once with a new kid share
// one fetch and are all accepted, though the rate limit allows one fetch.
func TestJWKSRotationStorm(t *testing.T) {
	k := getKeys(t)
	s := newJWKSServer(t)
	s.serve(t, jwkEntry{"A", "ES256", &k.p256.PublicKey})
	v := jwksVerifier(t, s.URL, auth.JWTConfig{JWKSUnknownKIDInterval: time.Hour})
	s.serve(t, jwkEntry{"A", "ES256", &k.p256.PublicKey}, jwkEntry{"B", "ES256", &k.p256.PublicKey})
	tok := sign(t, jwt.SigningMethodES256, k.p256, claimsAt(testNow), "B")
	const n = 50
	errs := make(chan error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := v.Verify(context.Background(), tok)
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Verify(kid B) during the storm: %v", err)
		}
	}
	if got := s.fetches.Load(); got != 2 {
		t.Fatalf("%d fetches; want 2 (start, and one for kid B)", got)
	}
}
