package subjects

import (
	"errors"
	"fmt"
)

// MaxIDLen is the longest thread or connection id accepted.
const MaxIDLen = 128

var (
	// ErrInvalidThreadID is wrapped by every thread id validation error.
	ErrInvalidThreadID = errors.New("invalid thread id")
	// ErrInvalidConnID is wrapped by every connection id validation error.
	ErrInvalidConnID = errors.New("invalid connection id")
)

// ValidateThreadID reports whether tid may name a thread: 1 to 128 characters
// of [A-Za-z0-9_-]. The error wraps ErrInvalidThreadID and says why.
func ValidateThreadID(tid string) error { return validate("thread", tid) }

// ValidateConnID is ValidateThreadID for connection ids; its errors wrap
// ErrInvalidConnID.
func ValidateConnID(cid string) error { return validate("connection", cid) }

func validate(what, id string) error {
	sentinel := ErrInvalidThreadID
	if what == "connection" {
		sentinel = ErrInvalidConnID
	}
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", sentinel)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %d bytes long, the limit is %d", sentinel, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if !idByte(id[i]) {
			return fmt.Errorf("%w: %q has %q at byte %d; use only A-Z a-z 0-9 _ -", sentinel, id, id[i], i)
		}
	}
	return nil
}

func idByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '_' || b == '-'
}
