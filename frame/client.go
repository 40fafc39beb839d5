package frame

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"

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

// MaxDepth is how deeply a client frame may nest objects and arrays, the
// frame object itself counting as 1. Agents parse frames with recursive
// decoders (Python's json raises RecursionError near 1,000); legacy
// frames nest 3 deep.
const MaxDepth = 64

// Parse parses one text frame. A frame must be UTF-8, a JSON object with a
// string "type", nested at most MaxDepth deep. Its routing keys ("type",
// "thread_id", "payload", "since", "epoch", and "thread_id", "since" and
// "epoch" in payload) appear at most once each and exactly in that case, so
// every JSON decoder an agent may use reads the same values the sidecar
// routed by. A thread id it names must be valid, and a top-level thread_id
// must name the same thread as payload.thread_id when both are set (null
// counts as not set).
//
// Parse runs for every frame a client sends, so it validates the frame and
// finds the few members it reads in one pass (see scanFrame) instead of
// decoding maps; FuzzParseDifferential holds it to parseReference, which
// does decode maps.
func Parse(data []byte) (Client, error) {
	c := Client{Raw: data}
	if !utf8.Valid(data) {
		return c, ErrInvalidUTF8
	}
	// Validity is encoding/json's to decide; the scanner agrees with it
	// (FuzzParseDifferential) but only finds the members Parse reads.
	var f members
	if !json.Valid(data) {
		return c, ErrNotJSON
	}
	if !scanFrame(data, &f) {
		if f.tooDeep {
			return c, ErrTooDeep
		}
		return c, ErrNotJSON // unreachable: json.Valid accepted it
	}
	if !f.object {
		return c, ErrNotObject
	}
	if f.repeated {
		return c, ErrRepeatedKey
	}
	if c.Type = f.typ.frameType(data); c.Type == "" {
		return c, ErrNotObject
	}
	tid, err := threadID(data, f.payload.tid)
	if err != nil {
		return c, err
	}
	top, err := threadID(data, f.tid)
	if err != nil {
		return c, err
	}
	switch {
	case tid == "":
		tid = top
	case top != "" && top != tid:
		return c, fmt.Errorf("%w: %q and %q", ErrThreadMismatch, top, tid)
	}
	c.ThreadID = tid
	if c.Type == TypeSwitchThread {
		if c.ThreadID == "" {
			return c, fmt.Errorf("%w: switch_thread needs payload.thread_id", subjects.ErrInvalidThreadID)
		}
		if c.Since, err = parseSince(f.payload.since.in(data)); err != nil {
			return c, err
		}
		if e := f.payload.epoch.in(data); len(e) > 0 && !isNull(e) {
			var ok bool
			if c.Epoch, ok = f.payload.epoch.text(data); !ok {
				return c, fmt.Errorf("%w: epoch must be a string", ErrNotObject)
			}
		}
	}
	return c, nil
}

// threadID decodes a thread_id member: absent or null is "", a string must be
// a valid thread id, anything else is invalid.
func threadID(data []byte, v span) (string, error) {
	raw := v.in(data)
	if len(raw) == 0 || isNull(raw) {
		return "", nil
	}
	tid, ok := v.text(data)
	if !ok {
		return "", fmt.Errorf("%w: thread_id must be a string, got %s", subjects.ErrInvalidThreadID, clip(raw))
	}
	if err := subjects.ValidateThreadID(tid); err != nil {
		return "", err
	}
	return tid, nil
}

// parseSince is ParseSince with a fast path for the plain integers clients
// send.
func parseSince(raw []byte) (*uint64, error) {
	if n, ok := plainUint(raw); ok {
		return &n, nil
	}
	return ParseSince(raw)
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

// plainUint decodes raw when it is only decimal digits and fits a uint64;
// anything else is left to encoding/json.
func plainUint(raw []byte) (uint64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (^uint64(0)-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// clip keeps error messages short when a client sends something large.
func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
