package frame

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/threadbus/threadbus/subjects"
)

// parseReference is Parse as it was before the single-pass scanner: two
// map decodes after json.Valid. It is the oracle for FuzzParseDifferential
// and the baseline for BenchmarkParse; do not optimise it.
func parseReference(data []byte) (Client, error) {
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
	if p := top["payload"]; refIsObject(p) {
		if err := json.Unmarshal(p, &payload); err != nil {
			return c, fmt.Errorf("%w: payload: %v", ErrNotObject, err)
		}
	}
	tid, err := refThreadID(payload["thread_id"])
	if err != nil {
		return c, err
	}
	if tid == "" {
		if tid, err = refThreadID(top["thread_id"]); err != nil {
			return c, err
		}
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
