// Package auth decides who a WebSocket connection is and which threads it may
// bind. It knows nothing of WebSockets: the sidecar hands it a token (see
// TokenFromRequest) and asks a Verifier for the Identity behind it, then asks
// an Authorizer before every bind a client causes.
//
// # Verifiers
//
// JWTVerifier checks a JWT with github.com/golang-jwt/jwt/v5 against one key
// source: an HMAC secret, a PEM public key (RSA, ECDSA, Ed25519) or a JWKS URL
// whose keys are chosen by kid and refreshed. The signing algorithm is pinned
// to the key's type, so "none" and algorithm confusion are refused.
//
// # Authorizers
//
// NATSAuthorizer asks threadbus.authz.bind with a NATS request and
// HTTPAuthorizer POSTs the same JSON to a URL. Anything but an explicit answer
// (timeout, no responders, non-2xx, unreadable reply) is ErrUnavailable: the
// bind is denied. Cache wraps an Authorizer, keeps allowed (user, thread)
// pairs for the reply's TTL, shares one call among concurrent requests for
// the same pair, and forgets pairs on Revoke.
//
// # Concurrency and lifecycle
//
// Every type here is safe for concurrent use. Verifiers that hold background
// work (a JWKS refresher) are closed with Close, which is idempotent and waits.
// Tokens are secrets: no error or log record of this package contains one.
package auth
