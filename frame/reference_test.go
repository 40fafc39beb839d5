package frame

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/threadbus/threadbus/subjects"
)

// parseReference is Parse as it was before the single-pass scanner: two
// map decodes after json.Valid, with the frame rules (UTF-8, depth, routing
// keys once and in their case, agreeing thread ids) checked each on its
// own. It is the oracle for FuzzParseDifferential and the baseline for
// BenchmarkParse; do not optimise it.
func parseReference(data []byte) (Client, error) {
	c := Client{Raw: data}
	if !utf8.Valid(data) {
		return c, ErrInvalidUTF8
	}
	if !json.Valid(data) {
		return c, ErrNotJSON
	}
	if refDepth(data) > MaxDepth {
		return c, ErrTooDeep
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return c, ErrNotObject
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return c, fmt.Errorf("%w: %v", ErrNotObject, err)
	}
	if refRepeats(data, "type", "thread_id", "payload", "since", "epoch") {
		return c, ErrRepeatedKey
	}
	if p := top["payload"]; refIsObject(p) && refRepeats(p, "thread_id", "since", "epoch") {
		return c, ErrRepeatedKey
	}
	if err := json.Unmarshal(top["type"], &c.Type); err != nil || c.Type == "" {
		return c, ErrNotObject
	}
	var payload map[string]json.RawMessage
	if p := top["payload"]; refIsObject(p) {
		if err := json.Unmarshal(p, &payload); err != nil {
			return c, fmt.Errorf("%w: payload: %v", ErrNotObject, err)
		}
	}
	tid, err := refThreadID(payload["thread_id"])
	if err != nil {
		return c, err
	}
	topTid, err := refThreadID(top["thread_id"])
	if err != nil {
		return c, err
	}
	if tid != "" && topTid != "" && tid != topTid {
		return c, fmt.Errorf("%w: %q and %q", ErrThreadMismatch, topTid, tid)
	}
	if tid == "" {
		tid = topTid
	}
	c.ThreadID = tid
	if c.Type == TypeSwitchThread {
		if c.ThreadID == "" {
			return c, fmt.Errorf("%w: switch_thread needs payload.thread_id", subjects.ErrInvalidThreadID)
		}
		if c.Since, err = refParseSince(payload["since"]); err != nil {
			return c, err
		}
		if e := payload["epoch"]; len(e) > 0 && !refIsNull(e) {
			if err := json.Unmarshal(e, &c.Epoch); err != nil {
				return c, fmt.Errorf("%w: epoch must be a string", ErrNotObject)
			}
		}
	}
	return c, nil
}

func refThreadID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || refIsNull(raw) {
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

func refParseSince(raw json.RawMessage) (*uint64, error) {
	if len(raw) == 0 || refIsNull(raw) {
		return nil, nil
	}
	var s uint64
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%w, got %s", ErrInvalidSince, clip(raw))
	}
	return &s, nil
}

func refIsNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func refIsObject(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && t[0] == '{'
}

// refDepth is how deeply the valid JSON data nests objects and arrays.
func refDepth(data []byte) int {
	dec := json.NewDecoder(bytes.NewReader(data))
	depth, deepest := 0, 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return deepest
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
			deepest = max(deepest, depth)
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
}

// refRepeats reports whether the JSON object obj has a key that equals one
// of names under strings.EqualFold but not exactly, or two keys equal to
// the same name that way.
func refRepeats(obj []byte, names ...string) bool {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if _, err := dec.Token(); err != nil {
		return false
	}
	count := map[string]int{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		key := tok.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return false
		}
		for _, n := range names {
			if strings.EqualFold(key, n) {
				if key != n {
					return true
				}
				count[n]++
			}
		}
	}
	for _, n := range count {
		if n > 1 {
			return true
		}
	}
	return false
}
