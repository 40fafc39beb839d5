package auth

import (
	"context"
	"time"
)

// Identity is who a verified connection is.
type Identity struct {
	// User is the value of the configured user claim (by default "sub").
	User string
	// Claims are the token's claims, passed on to the authorization hook.
	Claims map[string]any
	// Expires is the token's exp; the connection is closed with 4001 at
	// Expires plus the leeway. Zero when the verifier sets no expiry.
	Expires time.Time
}

// Verifier turns a token into an Identity. Errors wrap ErrNoToken,
// ErrInvalidToken or ErrTokenExpired, and never contain the token.
type Verifier interface {
	Verify(ctx context.Context, token string) (Identity, error)
}

// Via names what caused a bind, as the hook request's "via" says.
const (
	ViaURL    = "url"    // ?thread_id= at connect
	ViaSwitch = "switch" // a switch_thread frame
	ViaFrame  = "frame"  // a frame that names another thread
)

// Request asks whether a user may bind a connection to a thread. Its JSON
// form is the hook request of the contract.
type Request struct {
	User         string         `json:"user"`
	ThreadID     string         `json:"thread_id"`
	ConnectionID string         `json:"connection_id"`
	SidecarID    string         `json:"sidecar_id"`
	Via          string         `json:"via"`
	Claims       map[string]any `json:"claims,omitempty"`
}

// Decision is the hook's answer.
type Decision struct {
	Allow bool
	// TTL is how long an allowed pair may be cached; zero means the cache's
	// default, a negative value not at all (a reply's "ttl_s" of 0 or less).
	TTL time.Duration
	// Code and Message explain a denial; Code is "thread_forbidden" when
	// the hook gave none.
	Code    string
	Message string
}

// Authorizer decides a Request. An error means no decision could be had
// (it wraps ErrUnavailable) and the bind is denied with "authz_unavailable".
type Authorizer interface {
	Authorize(ctx context.Context, req Request) (Decision, error)
}

// AuthorizerFunc is an Authorizer made of a function, as http.HandlerFunc
// is a Handler.
type AuthorizerFunc func(ctx context.Context, req Request) (Decision, error)

// Authorize calls f.
func (f AuthorizerFunc) Authorize(ctx context.Context, req Request) (Decision, error) {
	return f(ctx, req)
}
