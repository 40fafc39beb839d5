package e2e

import (
	"encoding/json"
	"fmt"
	"time"
)

// Server frame types of the contract.
const (
	typeEstablished = "connection_established"
	typeBound       = "thread_bound"
	typePong        = "pong"
	typeError       = "error"
)

// frame is one message the server sent, parsed as far as the contract
// defines it.
type frame struct {
	At       time.Time // when the client read it
	Raw      []byte
	Binary   bool
	Type     string
	ThreadID string // top-level thread_id
	Seq      uint64
	HasSeq   bool
	Payload  json.RawMessage
}

// isEvent reports whether f is a thread event: a frame with a seq that is
// none of the server's own frame types.
func (f frame) isEvent() bool {
	switch f.Type {
	case typeEstablished, typeBound, typePong, typeError:
		return false
	}
	return f.HasSeq
}

func (f frame) String() string {
	const max = 300
	s := string(f.Raw)
	if len(s) > max {
		s = s[:max] + fmt.Sprintf("...(%d bytes)", len(f.Raw))
	}
	if f.Binary {
		return "binary:" + s
	}
	return s
}

func parseFrame(b []byte, binary bool) frame {
	f := frame{At: time.Now(), Raw: b, Binary: binary}
	var v struct {
		Type     string          `json:"type"`
		ThreadID string          `json:"thread_id"`
		Seq      *uint64         `json:"seq"`
		Payload  json.RawMessage `json:"payload"`
	}
	if json.Unmarshal(b, &v) == nil {
		f.Type, f.ThreadID, f.Payload = v.Type, v.ThreadID, v.Payload
		if v.Seq != nil {
			f.Seq, f.HasSeq = *v.Seq, true
		}
	}
	return f
}

// bound is the payload of a thread_bound frame.
type bound struct {
	ThreadID  string `json:"thread_id"`
	Replayed  int    `json:"replayed"`
	Recovered bool   `json:"recovered"`
	Epoch     string `json:"epoch"`
}

// errorPayload is the payload of an error frame.
type errorPayload struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func parseBound(f frame) (bound, error) {
	var b bound
	if f.Type != typeBound {
		return b, fmt.Errorf("frame %s is not %s", f, typeBound)
	}
	if err := json.Unmarshal(f.Payload, &b); err != nil {
		return b, fmt.Errorf("thread_bound payload: %v in %s", err, f)
	}
	if f.ThreadID != b.ThreadID {
		return b, fmt.Errorf("thread_bound has top-level thread_id %q and payload.thread_id %q: %s", f.ThreadID, b.ThreadID, f)
	}
	if b.Epoch == "" {
		return b, fmt.Errorf("thread_bound without payload.epoch: %s", f)
	}
	return b, nil
}

// events returns the event frames among frames.
func events(frames []frame) []frame {
	var out []frame
	for _, f := range frames {
		if f.isEvent() {
			out = append(out, f)
		}
	}
	return out
}

// countEvents returns how many of frames are events.
func countEvents(frames []frame) int {
	n := 0
	for _, f := range frames {
		if f.isEvent() {
			n++
		}
	}
	return n
}

// seqsOf returns the seqs of event frames.
func seqsOf(frames []frame) []uint64 {
	out := make([]uint64, 0, len(frames))
	for _, f := range frames {
		out = append(out, f.Seq)
	}
	return out
}

func jsonEqual(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return string(ja) == string(jb)
}
