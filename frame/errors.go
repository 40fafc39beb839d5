package frame

import (
	"errors"
	"fmt"

	"github.com/threadbus/threadbus/subjects"
)

// Parse errors. Each has a stable client-facing code, see Code.
var (
	ErrNotJSON      = errors.New("frame is not valid JSON")
	ErrNotObject    = errors.New(`frame must be a JSON object with a string "type"`)
	ErrBinary       = errors.New("binary frames are not supported; send JSON text frames")
	ErrInvalidSince = errors.New(`"since" must be a non-negative integer stream sequence`)
	// ErrInvalidUTF8 is a text frame that is not UTF-8; the sidecar closes
	// the connection with status 1007, as RFC 6455 requires.
	ErrInvalidUTF8 = errors.New("text frame is not valid UTF-8")
	// ErrTooDeep is a frame nesting more than MaxDepth objects and arrays.
	ErrTooDeep = fmt.Errorf("frame nests objects and arrays more than %d deep", MaxDepth)
	// ErrRepeatedKey is a frame that names a routing key twice, or in
	// another case: agents' JSON decoders disagree on which one wins.
	ErrRepeatedKey = errors.New(`frame repeats a routing key ("type", "thread_id", "payload", "since", "epoch", or "thread_id", "since", "epoch" in payload) or spells one in another case`)
	// ErrThreadMismatch is a frame whose top-level thread_id names another
	// thread than its payload.thread_id.
	ErrThreadMismatch = errors.New("top-level thread_id and payload.thread_id name different threads")
)

// Stable error codes sent to clients in {"type":"error","payload":{"code":...}}.
const (
	CodeInvalidJSON     = "invalid_json"
	CodeInvalidFrame    = "invalid_frame"
	CodeBinaryFrame     = "binary_frame"
	CodeInvalidThreadID = "invalid_thread_id"
	CodeInvalidSince    = "invalid_since"
	CodePublishFailed   = "publish_failed"
	CodeBindFailed      = "bind_failed"
	CodeInternal        = "internal_error"
	CodeRateLimited     = "rate_limited"
)

// Code returns the client-facing code for err, or CodeInternal for an error
// this package does not know.
func Code(err error) string {
	switch {
	case errors.Is(err, ErrNotJSON):
		return CodeInvalidJSON
	case errors.Is(err, ErrNotObject), errors.Is(err, ErrTooDeep), errors.Is(err, ErrRepeatedKey),
		errors.Is(err, ErrThreadMismatch), errors.Is(err, ErrInvalidUTF8):
		return CodeInvalidFrame
	case errors.Is(err, ErrBinary):
		return CodeBinaryFrame
	case errors.Is(err, subjects.ErrInvalidThreadID):
		return CodeInvalidThreadID
	case errors.Is(err, ErrInvalidSince):
		return CodeInvalidSince
	default:
		return CodeInternal
	}
}
