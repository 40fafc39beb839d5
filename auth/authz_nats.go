package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/subjects"
)

// DefaultAuthzTimeout bounds one hook call when no timeout is given.
const DefaultAuthzTimeout = time.Second

// NATSAuthorizer asks the backend with a NATS request to
// subjects.AuthzBind; the backend answers it, usually from a queue group.
// It is safe for concurrent use and owns nothing: the connection is the
// caller's.
type NATSAuthorizer struct {
	nc      *nats.Conn
	timeout time.Duration
}

var _ Authorizer = (*NATSAuthorizer)(nil)

// NewNATSAuthorizer asks over nc, waiting at most timeout for each reply
// (by default, DefaultAuthzTimeout).
func NewNATSAuthorizer(nc *nats.Conn, timeout time.Duration) *NATSAuthorizer {
	if timeout <= 0 {
		timeout = DefaultAuthzTimeout
	}
	return &NATSAuthorizer{nc: nc, timeout: timeout}
}

// Authorize sends req as JSON and reads the decision. No reply in time, no
// responders and an unreadable reply are errors wrapping ErrUnavailable.
func (a *NATSAuthorizer) Authorize(ctx context.Context, req Request) (Decision, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Decision{}, fmt.Errorf("authorize: %w: encode request: %w", ErrUnavailable, err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	msg, err := a.nc.RequestWithContext(ctx, subjects.AuthzBind, body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return Decision{}, fmt.Errorf("authorize: %w: no responders on %s", ErrUnavailable, subjects.AuthzBind)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return Decision{}, fmt.Errorf("authorize: %w: no reply on %s within %s", ErrUnavailable, subjects.AuthzBind, a.timeout)
	case err != nil:
		return Decision{}, fmt.Errorf("authorize: %w: request on %s: %w", ErrUnavailable, subjects.AuthzBind, err)
	}
	d, err := parseReply(msg.Data)
	if err != nil {
		return Decision{}, fmt.Errorf("authorize: %w: %s: %w", ErrUnavailable, subjects.AuthzBind, err)
	}
	return d, nil
}
