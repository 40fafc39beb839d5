package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/auth"
)

// Defaults of the identity and authorization flags.
const (
	defaultJWTLeeway     = 30 * time.Second
	defaultAuthzTimeout  = time.Second
	defaultAuthzCacheTTL = 60 * time.Second
)

// authFlags are serve's identity and authorization flags (contract v2).
func authFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "auth", Value: "none", Usage: "how WebSocket clients are identified: none or jwt", EnvVars: envVars("AUTH")},
		&cli.BoolFlag{Name: "insecure-no-auth", Usage: "allow --auth none on a non-loopback --listen address", EnvVars: envVars("INSECURE_NO_AUTH")},
		&cli.StringFlag{Name: "jwt-secret-file", Usage: "`FILE` holding the HMAC secret of HS256/384/512 tokens", EnvVars: envVars("JWT_SECRET_FILE")},
		&cli.StringFlag{Name: "jwt-public-key-file", Usage: "PEM `FILE` with the RSA, ECDSA or Ed25519 public key of tokens", EnvVars: envVars("JWT_PUBLIC_KEY_FILE")},
		&cli.StringFlag{Name: "jwt-jwks-url", Usage: "`URL` of a JWKS; keys are chosen by kid and refreshed", EnvVars: envVars("JWT_JWKS_URL")},
		&cli.StringFlag{Name: "jwt-issuer", Usage: "required iss claim (empty: not checked)", EnvVars: envVars("JWT_ISSUER")},
		&cli.StringFlag{Name: "jwt-audience", Usage: "required aud claim (empty: not checked)", EnvVars: envVars("JWT_AUDIENCE")},
		&cli.StringFlag{Name: "jwt-user-claim", Value: "sub", Usage: "claim that holds the user id", EnvVars: envVars("JWT_USER_CLAIM")},
		&cli.DurationFlag{Name: "jwt-leeway", Value: defaultJWTLeeway, Usage: "clock skew allowed on exp and nbf; a connection closes at exp plus this", EnvVars: envVars("JWT_LEEWAY")},
		&cli.StringFlag{Name: "jwt-query-param", Usage: "query parameter that may carry the token (empty: off; query strings end up in access logs)", EnvVars: envVars("JWT_QUERY_PARAM")},
		&cli.IntFlag{Name: "max-conns-per-user", Usage: "connections one user may have open on this sidecar (0: no limit)", EnvVars: envVars("MAX_CONNS_PER_USER")},
		&cli.StringFlag{Name: "authz", Usage: "who authorizes client binds: none, nats (threadbus.authz.bind) or http (--authz-url); required with --auth jwt", EnvVars: envVars("AUTHZ")},
		&cli.StringFlag{Name: "authz-url", Usage: "`URL` the http authorizer POSTs to", EnvVars: envVars("AUTHZ_URL")},
		&cli.DurationFlag{Name: "authz-timeout", Value: defaultAuthzTimeout, Usage: "longest wait for the authorization hook; then the bind is denied", EnvVars: envVars("AUTHZ_TIMEOUT")},
		&cli.DurationFlag{Name: "authz-cache-ttl", Value: defaultAuthzCacheTTL, Usage: "how long an allowed (user, thread) is cached when the hook gives no ttl_s (0: no cache)", EnvVars: envVars("AUTHZ_CACHE_TTL")},
	}
}

// authConfig is what the flags ask for, checked.
type authConfig struct {
	jwt             bool
	jwtConfig       auth.JWTConfig
	leeway          time.Duration // --jwt-leeway
	queryParam      string
	maxConnsPerUser int
	authz           string // none, nats or http
	authzURL        string
	authzTimeout    time.Duration
	authzCacheTTL   time.Duration
}

// errInsecure is serve refusing to expose anonymous WebSockets.
var errInsecure = errors.New("--auth none on a non-loopback --listen address lets anyone who reaches it read and write every thread; use --auth jwt, or --insecure-no-auth if something in front of threadbus authenticates clients")

func authConfigFrom(c *cli.Context, listen string) (authConfig, error) {
	ac := authConfig{
		queryParam:      c.String("jwt-query-param"),
		maxConnsPerUser: c.Int("max-conns-per-user"),
		authz:           c.String("authz"),
		authzURL:        c.String("authz-url"),
		authzTimeout:    c.Duration("authz-timeout"),
		authzCacheTTL:   c.Duration("authz-cache-ttl"),
	}
	switch c.String("auth") {
	case "none":
		if !c.Bool("insecure-no-auth") && !isLoopback(listen) {
			return ac, errInsecure
		}
		if ac.authz == "" {
			ac.authz = "none"
		}
	case "jwt":
		ac.jwt = true
		if ac.authz == "" {
			return ac, errors.New("--auth jwt needs --authz chosen explicitly: nats, http, or none (every thread open to every authenticated user)")
		}
		jc, err := jwtConfigFrom(c)
		if err != nil {
			return ac, err
		}
		ac.jwtConfig = jc
		ac.leeway = c.Duration("jwt-leeway")
	default:
		return ac, fmt.Errorf("--auth %q: want none or jwt", c.String("auth"))
	}
	switch ac.authz {
	case "none", "nats":
	case "http":
		if ac.authzURL == "" {
			return ac, errors.New("--authz http needs --authz-url")
		}
	default:
		return ac, fmt.Errorf("--authz %q: want none, nats or http", ac.authz)
	}
	if ac.maxConnsPerUser < 0 {
		return ac, errors.New("--max-conns-per-user must not be negative")
	}
	if ac.authzTimeout <= 0 {
		return ac, errors.New("--authz-timeout must be positive")
	}
	if ac.authzCacheTTL < 0 {
		return ac, errors.New("--authz-cache-ttl must not be negative")
	}
	return ac, nil
}

func jwtConfigFrom(c *cli.Context) (auth.JWTConfig, error) {
	jc := auth.JWTConfig{
		JWKSURL:   c.String("jwt-jwks-url"),
		Issuer:    c.String("jwt-issuer"),
		Audience:  c.String("jwt-audience"),
		UserClaim: c.String("jwt-user-claim"),
		Leeway:    c.Duration("jwt-leeway"),
	}
	sources := 0
	if jc.JWKSURL != "" {
		sources++
	}
	if f := c.String("jwt-secret-file"); f != "" {
		sources++
		b, err := auth.ReadSecretFile(f)
		if err != nil {
			return jc, fmt.Errorf("--jwt-secret-file: %w", err)
		}
		jc.Secret = b
	}
	if f := c.String("jwt-public-key-file"); f != "" {
		sources++
		b, err := os.ReadFile(f)
		if err != nil {
			return jc, fmt.Errorf("--jwt-public-key-file: %w", err)
		}
		jc.PublicKeyPEM = b
	}
	if sources != 1 {
		return jc, errors.New("--auth jwt needs exactly one key source: --jwt-secret-file, --jwt-public-key-file or --jwt-jwks-url")
	}
	switch {
	case jc.Leeway < 0:
		return jc, errors.New("--jwt-leeway must not be negative")
	case jc.Leeway == 0:
		jc.Leeway = -1 // JWTConfig's "none"; its zero means the default
	}
	return jc, nil
}

// verifier returns the configured Verifier, or nil without --auth jwt. The
// caller closes it.
func (ac authConfig) verifier(ctx context.Context) (*auth.JWTVerifier, error) {
	if !ac.jwt {
		return nil, nil
	}
	v, err := auth.NewJWTVerifier(ctx, ac.jwtConfig)
	if err != nil {
		return nil, fmt.Errorf("--auth jwt: %w", err)
	}
	return v, nil
}

// authorizer returns the configured Authorizer, cached, or nil with --authz none.
func (ac authConfig) authorizer(nc *nats.Conn) (*auth.Cache, error) {
	var a auth.Authorizer
	switch ac.authz {
	case "nats":
		a = auth.NewNATSAuthorizer(nc, ac.authzTimeout)
	case "http":
		h, err := auth.NewHTTPAuthorizer(ac.authzURL, &http.Client{}, ac.authzTimeout)
		if err != nil {
			return nil, fmt.Errorf("--authz-url: %w", err)
		}
		a = h
	default:
		return nil, nil
	}
	return auth.NewCache(a, ac.authzCacheTTL), nil
}

// mode names the identity mode for the ready line.
func (ac authConfig) mode() string {
	if ac.jwt {
		return "jwt"
	}
	return "none"
}

// isLoopback reports whether a listen address accepts only local clients.
func isLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
