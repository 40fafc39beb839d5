package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/threadbus/threadbus/subjects"
)

// ParseRevoke reads a message of subjects.AuthzRevoke:
// {"user":"U","thread_id":"T"}, either field absent (or empty) meaning
// every one, as Cache.Revoke takes them: {} revokes everything. Errors wrap
// ErrInvalidRevoke.
func ParseRevoke(data []byte) (user, thread string, err error) {
	// json.Unmarshal takes null as an empty object: that would revoke all.
	if !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		return "", "", fmt.Errorf("%w: not a JSON object", ErrInvalidRevoke)
	}
	var m struct {
		User     string `json:"user"`
		ThreadID string `json:"thread_id"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return "", "", fmt.Errorf("%w: %q is not a string", ErrInvalidRevoke, te.Field)
		}
		return "", "", fmt.Errorf("%w: %w", ErrInvalidRevoke, err)
	}
	if m.User != "" {
		if err := ValidateUser(m.User); err != nil {
			return "", "", fmt.Errorf("%w: %w", ErrInvalidRevoke, err)
		}
	}
	if m.ThreadID != "" {
		if err := subjects.ValidateThreadID(m.ThreadID); err != nil {
			return "", "", fmt.Errorf("%w: %w", ErrInvalidRevoke, err)
		}
	}
	return m.User, m.ThreadID, nil
}
