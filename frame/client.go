package frame

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/threadbus/threadbus/subjects"
)

// Frame types the sidecar acts on itself. Every other type is published.
const (
	TypePing         = "ping"
	TypeSwitchThread = "switch_thread"
)

// Client is a parsed client frame. Raw is the frame exactly as received; it
// is what gets published.
type Client struct {
	Type string
	// ThreadID is the thread the frame names in payload.thread_id or, when
	// that is absent or null, in the top-level thread_id. Empty when neither
	// names one. Always a valid thread id when not empty.
	ThreadID string
	// Since and Epoch come from a switch_thread payload; Since is nil when
	// the client did not ask to resume from a sequence.
	Since *uint64
	Epoch string
	Raw   []byte
}

// Parse parses one text frame. A frame must be a JSON object with a string
// "type"; a thread id it names must be valid.
func Parse(data []byte) (Client, error) {
	c := Client{Raw: data}
	if !json.Valid(data) {
		return c, ErrNotJSON
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return c, ErrNotObject
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return c, fmt.Errorf("%w: %v", ErrNotObject, err)
	}
	if err := json.Unmarshal(top["type"], &c.Type); err != nil || c.Type == "" {
		return c, ErrNotObject
	}
	var payload map[string]json.RawMessage
	if p := top["payload"]; isObject(p) {
		if err := json.Unmarshal(p, &payload); err != nil {
			return c, fmt.Errorf("%w: payload: %v", ErrNotObject, err)
		}
	}
	tid, err := threadID(payload["thread_id"])
	if err != nil {
		return c, err
	}
	if tid == "" {
		if tid, err = threadID(top["thread_id"]); err != nil {
			return c, err
		}
	}
	c.ThreadID = tid
	if c.Type == TypeSwitchThread {
		if c.ThreadID == "" {
			return c, fmt.Errorf("%w: switch_thread needs payload.thread_id", subjects.ErrInvalidThreadID)
		}
		if c.Since, err = ParseSince(payload["since"]); err != nil {
			return c, err
		}
		if e := payload["epoch"]; len(e) > 0 && !isNull(e) {
			if err := json.Unmarshal(e, &c.Epoch); err != nil {
				return c, fmt.Errorf("%w: epoch must be a string", ErrNotObject)
			}
		}
	}
	return c, nil
}

// threadID decodes a thread_id member: absent or null is "", a string must be
// a valid thread id, anything else is invalid.
func threadID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || isNull(raw) {
		return "", nil
	}
	var tid string
	if err := json.Unmarshal(raw, &tid); err != nil {
		return "", fmt.Errorf("%w: thread_id must be a string, got %s", subjects.ErrInvalidThreadID, clip(raw))
	}
	if err := subjects.ValidateThreadID(tid); err != nil {
		return "", err
	}
	return tid, nil
}

// ParseSince decodes a "since" value: absent or null is nil, otherwise a
// non-negative integer.
func ParseSince(raw json.RawMessage) (*uint64, error) {
	if len(raw) == 0 || isNull(raw) {
		return nil, nil
	}
	var s uint64
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%w, got %s", ErrInvalidSince, clip(raw))
	}
	return &s, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func isObject(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && t[0] == '{'
}

// clip keeps error messages short when a client sends something large.
func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
