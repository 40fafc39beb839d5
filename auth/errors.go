package auth

import "errors"

var (
	// ErrNoToken: the request carried no token in any enabled source.
	ErrNoToken = errors.New("no token")
	// ErrInvalidToken: the token is malformed, badly signed, or fails a
	// claim check other than expiry.
	ErrInvalidToken = errors.New("invalid token")
	// ErrTokenExpired: the token's exp (plus leeway) has passed.
	ErrTokenExpired = errors.New("token expired")
	// ErrUnavailable: the authorization hook gave no usable answer.
	ErrUnavailable = errors.New("authorization unavailable")
	// ErrInvalidRevoke: a revocation message is not the contract's JSON.
	ErrInvalidRevoke = errors.New("invalid revocation")
)

// Client-facing codes of the contract (error frames and close reasons).
const (
	CodeUnauthorized     = "unauthorized"
	CodeTokenExpired     = "token_expired"
	CodeThreadForbidden  = "thread_forbidden"
	CodeAuthzUnavailable = "authz_unavailable"
	CodeConnectionLimit  = "connection_limit"
)
