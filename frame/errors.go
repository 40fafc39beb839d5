package frame

import (
	"errors"

	"github.com/threadbus/threadbus/subjects"
)

// Parse errors. Each has a stable client-facing code, see Code.
var (
	ErrNotJSON      = errors.New("frame is not valid JSON")
	ErrNotObject    = errors.New(`frame must be a JSON object with a string "type"`)
	ErrBinary       = errors.New("binary frames are not supported; send JSON text frames")
	ErrInvalidSince = errors.New(`"since" must be a non-negative integer stream sequence`)
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
)

// Code returns the client-facing code for err, or CodeInternal for an error
// this package does not know.
func Code(err error) string {
	switch {
	case errors.Is(err, ErrNotJSON):
		return CodeInvalidJSON
	case errors.Is(err, ErrNotObject):
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
