package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// MaxUserBytes bounds a user id: it travels in the Threadbus-User header of
// every frame a connection publishes, in the bindings registry and in logs.
const MaxUserBytes = 256

// MinHMACSecretBytes is the shortest HMAC secret accepted: RFC 7518 section
// 3.2 requires a key at least as long as the hash output (256 bits for HS256).
const MinHMACSecretBytes = 32

// JWTConfig configures a JWTVerifier. Exactly one key source is set:
// Secret, PublicKeyPEM or JWKSURL. The zero value of every other field means
// its documented default.
type JWTConfig struct {
	// Secret is an HMAC secret: tokens are signed with HS256, HS384 or
	// HS512. At least MinHMACSecretBytes long.
	Secret []byte
	// PublicKeyPEM is a PEM public key ("PUBLIC KEY", "RSA PUBLIC KEY" or a
	// "CERTIFICATE"): RSA accepts RS256/384/512 and PS256/384/512, ECDSA the
	// ES algorithm of its curve (P-256: ES256, P-384: ES384, P-521: ES512),
	// Ed25519 accepts EdDSA.
	PublicKeyPEM []byte
	// JWKSURL is a JWK Set endpoint. A token's kid chooses the key, and the
	// token's alg must suit the key's type (as for PublicKeyPEM) and equal
	// the key's "alg" when the key has one. Symmetric ("oct") and private
	// keys in the set are refused.
	JWKSURL string

	// Issuer, when set, is required in the iss claim.
	Issuer string
	// Audience, when set, is required among the aud claim's values.
	Audience string
	// UserClaim names the claim holding the user id. By default, "sub".
	UserClaim string
	// Leeway is the clock skew allowed on exp and nbf. By default, 30s; a
	// negative value means none.
	Leeway time.Duration

	// JWKSRefreshInterval is how often the JWK Set is fetched again. By
	// default, 1h.
	JWKSRefreshInterval time.Duration
	// JWKSUnknownKIDInterval is the least time between two fetches caused by
	// a token whose kid is not in the set (a key rotation, or a client
	// sending made-up kids). By default, 1m.
	JWKSUnknownKIDInterval time.Duration
	// JWKSTimeout bounds one fetch of the JWK Set. By default, 10s.
	JWKSTimeout time.Duration
	// HTTPClient fetches the JWK Set. By default, a client with no other
	// timeout than JWKSTimeout.
	HTTPClient *http.Client

	// Logger receives JWK Set refresh failures. By default, nothing is
	// logged.
	Logger *slog.Logger
	// Now is the clock exp and nbf are checked against. By default,
	// time.Now.
	Now func() time.Time
}

func (c JWTConfig) withDefaults() JWTConfig {
	if c.UserClaim == "" {
		c.UserClaim = "sub"
	}
	switch {
	case c.Leeway == 0:
		c.Leeway = 30 * time.Second
	case c.Leeway < 0:
		c.Leeway = 0
	}
	if c.JWKSRefreshInterval <= 0 {
		c.JWKSRefreshInterval = time.Hour
	}
	if c.JWKSUnknownKIDInterval <= 0 {
		c.JWKSUnknownKIDInterval = time.Minute
	}
	if c.JWKSTimeout <= 0 {
		c.JWKSTimeout = 10 * time.Second
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// keySource gives the key a token is verified with.
type keySource interface {
	// methods are the algorithms the source's keys can verify.
	methods() []string
	// key returns the key for a parsed, not yet verified, token. Its error
	// is shown to operators: it never quotes the token.
	key(ctx context.Context, t *jwt.Token) (any, error)
	close()
}

// JWTVerifier verifies JWTs against one key source. It is safe for
// concurrent use; Close stops the JWK Set refresh, if any.
type JWTVerifier struct {
	cfg    JWTConfig
	keys   keySource
	parser *jwt.Parser

	closeOnce sync.Once
}

var _ Verifier = (*JWTVerifier)(nil)

// NewJWTVerifier checks cfg and prepares its key source. With a JWKSURL, the
// set is fetched once before it returns (bounded by ctx and JWKSTimeout):
// a verifier that cannot know any key is an error, not a verifier that
// refuses everything.
func NewJWTVerifier(ctx context.Context, cfg JWTConfig) (*JWTVerifier, error) {
	cfg = cfg.withDefaults()
	n := 0
	for _, set := range []bool{len(cfg.Secret) > 0, len(cfg.PublicKeyPEM) > 0, cfg.JWKSURL != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("jwt: give exactly one key source (an HMAC secret, a PEM public key or a JWKS URL), not %d", n)
	}
	var (
		keys keySource
		err  error
	)
	switch {
	case len(cfg.Secret) > 0:
		keys, err = newHMACKey(cfg.Secret)
	case len(cfg.PublicKeyPEM) > 0:
		keys, err = newPEMKey(cfg.PublicKeyPEM)
	default:
		keys, err = newJWKSKeys(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("jwt: %w", err)
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(keys.methods()),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(cfg.Now),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	return &JWTVerifier{cfg: cfg, keys: keys, parser: jwt.NewParser(opts...)}, nil
}

// Leeway is the clock skew allowed on exp: a connection may stay open until
// Identity.Expires plus Leeway.
func (v *JWTVerifier) Leeway() time.Duration { return v.cfg.Leeway }

// Verify checks token's signature and claims and returns who it names.
// Errors wrap ErrTokenExpired when the token is valid but for its expiry,
// ErrInvalidToken otherwise; they never contain the token. ctx bounds a
// JWK Set fetch caused by an unknown kid.
func (v *JWTVerifier) Verify(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, fmt.Errorf("verify token: %w", ErrNoToken)
	}
	claims := jwt.MapClaims{}
	var keyErr error
	parsed, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		k, err := v.keys.key(ctx, t)
		keyErr = err
		return k, err
	})
	if err != nil {
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) && parsed != nil && parsed.Method != nil &&
			!slices.Contains(v.keys.methods(), parsed.Method.Alg()) {
			// A registered algorithm's name: safe to quote.
			return Identity{}, fmt.Errorf("verify token: %w: algorithm %s not allowed for the key", ErrInvalidToken, parsed.Method.Alg())
		}
		return Identity{}, verifyError(err, keyErr)
	}
	user, err := userOf(claims, v.cfg.UserClaim)
	if err != nil {
		return Identity{}, fmt.Errorf("verify token: %w: %w", ErrInvalidToken, err)
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil { // the parser requires exp: unreachable
		return Identity{}, fmt.Errorf("verify token: %w: no exp", ErrInvalidToken)
	}
	return Identity{User: user, Claims: claims, Expires: exp.Time}, nil
}

// Close stops the JWK Set refresh and waits for it. It is idempotent.
func (v *JWTVerifier) Close() {
	v.closeOnce.Do(v.keys.close)
}

// verifyError turns a parser error into one of ours. jwt's own messages are
// not passed on: some quote header values (the alg) that the token's author
// chose, and logs should not carry those. Any failure other than expiry
// is ErrInvalidToken, even when the token has also expired: a fresh token
// with the same fault would not help the client.
func verifyError(err, keyErr error) error {
	if keyErr != nil {
		return fmt.Errorf("verify token: %w: %w", ErrInvalidToken, keyErr)
	}
	reasons := []struct {
		err error
		msg string
	}{
		{jwt.ErrTokenMalformed, "malformed"},
		{jwt.ErrTokenUnverifiable, "unknown signing algorithm"},
		{jwt.ErrTokenSignatureInvalid, "bad signature"},
		{jwt.ErrTokenRequiredClaimMissing, "missing a required claim (exp, iss or aud)"},
		{jwt.ErrTokenInvalidIssuer, "wrong issuer"},
		{jwt.ErrTokenInvalidAudience, "wrong audience"},
		{jwt.ErrTokenNotValidYet, "not valid yet (nbf)"},
		{jwt.ErrTokenUsedBeforeIssued, "issued in the future"},
		{jwt.ErrInvalidType, "a claim has the wrong type"},
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return fmt.Errorf("verify token: %w: %s", ErrInvalidToken, r.msg)
		}
	}
	if errors.Is(err, jwt.ErrTokenExpired) {
		return fmt.Errorf("verify token: %w", ErrTokenExpired)
	}
	return fmt.Errorf("verify token: %w: invalid claims", ErrInvalidToken)
}

// userOf reads the user id from claim, and checks it can travel in a NATS
// header and a log line unchanged.
func userOf(claims jwt.MapClaims, claim string) (string, error) {
	v, ok := claims[claim]
	if !ok {
		return "", fmt.Errorf("no %q claim", claim)
	}
	user, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("claim %q is not a string", claim)
	}
	if err := ValidateUser(user); err != nil {
		return "", fmt.Errorf("claim %q: %w", claim, err)
	}
	return user, nil
}

// ValidateUser checks that a user id is usable as is in a NATS header value
// and a log line: not empty, at most MaxUserBytes, valid UTF-8, no control
// characters, and no leading or trailing space (header parsers trim it).
func ValidateUser(user string) error {
	switch {
	case user == "":
		return errors.New("empty user id")
	case len(user) > MaxUserBytes:
		return fmt.Errorf("user id over %d bytes", MaxUserBytes)
	case !utf8.ValidString(user):
		return errors.New("user id is not valid UTF-8")
	case strings.TrimSpace(user) != user:
		return errors.New("user id has leading or trailing space")
	case strings.ContainsFunc(user, unicode.IsControl):
		return errors.New("user id has a control character")
	}
	return nil
}
