package bench

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// minPayloadBytes is the smallest body eventBody and clientFrame can build.
const minPayloadBytes = 192

// eventBody is an agent event of about size bytes. Its first member is
// "n":<n>, the bench's own numbering, which receivers read back without
// decoding the whole frame (the sidecar puts thread_id and seq before it).
func eventBody(n int, size int) []byte {
	b := make([]byte, 0, size+16)
	b = append(b, `{"n":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"type":"agent_thinking","run_id":"bench","agent_name":"bench","timestamp":"2026-01-01T00:00:00Z","payload":{"step_number":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"reasoning":"`...)
	return pad(b, size, `"}}`)
}

// clientFrame is a user_message frame of about size bytes naming thread tid.
func clientFrame(n int, tid string, size int) []byte {
	b := make([]byte, 0, size+16)
	b = append(b, `{"n":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"type":"user_message","payload":{"thread_id":`...)
	b = strconv.AppendQuote(b, tid)
	b = append(b, `,"references":[],"content":"`...)
	return pad(b, size, `"}}`)
}

// switchFrame asks the sidecar to bind to tid and replay it from the start.
func switchFrame(tid string) []byte {
	return []byte(`{"type":"switch_thread","payload":{"thread_id":` + strconv.Quote(tid) + `,"since":0}}`)
}

// pad fills b with letters up to size bytes, leaving room for tail.
func pad(b []byte, size int, tail string) []byte {
	for len(b)+len(tail) < size {
		b = append(b, 'a'+byte(len(b)%26))
	}
	return append(b, tail...)
}

// frameKind is what a frame from the sidecar is.
type frameKind uint8

const (
	otherFrame frameKind = iota
	eventFrame
	boundFrame
	errorFrame
)

// inFrame is what the bench reads from a frame it received.
type inFrame struct {
	kind     frameKind
	seq      uint64 // events: the stream sequence
	n        int    // events: the bench's numbering; -1 when absent
	replayed int    // thread_bound
	code     string // error
	message  string // error
}

var (
	eventPrefix = []byte(`{"thread_id":`)
	seqKey      = []byte(`"seq":`)
	nKey        = []byte(`"n":`)
)

// parseFrame classifies a sidecar frame. Events, the hot path, are read
// without decoding: the sidecar writes them as {"thread_id":..,"seq":S,
// followed by the published members, the first of which is "n" here.
func parseFrame(b []byte) inFrame {
	if bytes.HasPrefix(b, eventPrefix) {
		f := inFrame{kind: eventFrame, n: -1}
		if i := bytes.Index(b, seqKey); i >= 0 {
			v, _ := leadingInt(b[i+len(seqKey):])
			f.seq = uint64(v)
		}
		if i := bytes.Index(b, nKey); i >= 0 {
			if v, ok := leadingInt(b[i+len(nKey):]); ok {
				f.n = v
			}
		}
		return f
	}
	var v struct {
		Type    string `json:"type"`
		Payload struct {
			Replayed int    `json:"replayed"`
			Code     string `json:"code"`
			Message  string `json:"message"`
		} `json:"payload"`
	}
	if json.Unmarshal(b, &v) != nil {
		return inFrame{}
	}
	switch v.Type {
	case "thread_bound":
		return inFrame{kind: boundFrame, replayed: v.Payload.Replayed}
	case "error":
		return inFrame{kind: errorFrame, code: v.Payload.Code, message: v.Payload.Message}
	}
	return inFrame{}
}

// bodyN reads "n" from a body built by eventBody or clientFrame; -1 when
// there is none.
func bodyN(b []byte) int {
	if i := bytes.Index(b, nKey); i >= 0 {
		if v, ok := leadingInt(b[i+len(nKey):]); ok {
			return v
		}
	}
	return -1
}

// leadingInt parses the non-negative decimal integer at the start of b.
func leadingInt(b []byte) (int, bool) {
	n, i := 0, 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		n = n*10 + int(b[i]-'0')
	}
	return n, i > 0
}

// threadName is the id of thread i of one phase of a run.
func threadName(run, phase string, i int) string {
	var sb strings.Builder
	sb.WriteString("bench_")
	sb.WriteString(run)
	sb.WriteByte('_')
	sb.WriteString(phase)
	sb.WriteByte('_')
	sb.WriteString(strconv.Itoa(i))
	return sb.String()
}
