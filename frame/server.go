package frame

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// Server frame types.
const (
	TypeConnectionEstablished = "connection_established"
	TypeThreadBound           = "thread_bound"
	TypeError                 = "error"
	TypePong                  = "pong"
	// TypeEvent is the type given to a published body that was not a JSON
	// object, which is delivered wrapped as its payload.
	TypeEvent = "event"
)

// Established is the first frame of every connection.
func Established(cid string) []byte {
	return mustJSON(map[string]any{
		"type":    TypeConnectionEstablished,
		"payload": map[string]any{"connection_id": cid},
	})
}

// Bound describes a (re)binding; it precedes the replayed events.
type Bound struct {
	ThreadID  string `json:"thread_id"`
	Replayed  int    `json:"replayed"`
	Recovered bool   `json:"recovered"`
	Epoch     string `json:"epoch"`
}

// ThreadBound is the frame sent after every (re)bind.
func ThreadBound(b Bound) []byte {
	return mustJSON(struct {
		Type     string `json:"type"`
		ThreadID string `json:"thread_id"`
		Payload  Bound  `json:"payload"`
	}{TypeThreadBound, b.ThreadID, b})
}

// Error is an error frame with a stable code and a readable message.
func Error(code, message string) []byte {
	return mustJSON(map[string]any{
		"type":    TypeError,
		"payload": map[string]string{"code": code, "message": message},
	})
}

// Pong answers a ping, echoing its timestamp when present. Only the
// timestamp: a client that pings with a large payload and never reads
// would otherwise make the sidecar hold copies of it.
func Pong(ping []byte) []byte {
	var p struct {
		Timestamp json.RawMessage `json:"timestamp,omitempty"`
	}
	_ = json.Unmarshal(ping, &p) // the ping was parsed already; timestamp is optional
	if len(p.Timestamp) > 64 {
		p.Timestamp = nil // a timestamp is a number or a short string
	}
	return mustJSON(struct {
		Type      string          `json:"type"`
		Timestamp json.RawMessage `json:"timestamp,omitempty"`
	}{TypePong, p.Timestamp})
}

// Event turns a stored event body into the frame delivered to clients: the
// body's JSON object with "thread_id" and "seq" set first, replacing any
// published values. A body that is not a JSON object is wrapped as
// {"thread_id":...,"seq":...,"type":"event","payload":<body>}, with a body
// that is not JSON at all carried as a JSON string.
func Event(body []byte, tid string, seq uint64) []byte {
	head := make([]byte, 0, len(body)+len(tid)+48)
	head = append(head, `{"thread_id":`...)
	head = strconv.AppendQuote(head, tid) // ids are [A-Za-z0-9_-]: quoting is JSON-safe
	head = append(head, `,"seq":`...)
	head = strconv.AppendUint(head, seq, 10)

	t := bytes.TrimSpace(body)
	if len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return wrap(head, t)
	}
	if !bytes.Contains(t, []byte(`"thread_id"`)) && !bytes.Contains(t, []byte(`"seq"`)) && !bytes.Contains(t, []byte(`\u`)) {
		// Fast path: no reserved key can be present; splice the members in.
		rest := bytes.TrimSpace(t[1:])
		if rest[0] == '}' {
			return append(head, '}')
		}
		return append(append(head, ','), rest...)
	}
	return rebuild(head, t)
}

// rebuild copies the members of a valid JSON object except the reserved ones,
// keeping their order.
func rebuild(head, obj []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if _, err := dec.Token(); err != nil { // '{'
		return wrap(head, obj)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return wrap(head, obj)
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return wrap(head, obj)
		}
		if key == "thread_id" || key == "seq" {
			continue
		}
		head = append(head, ',')
		head = append(head, mustJSON(key)...)
		head = append(head, ':')
		head = append(head, val...)
	}
	return append(head, '}')
}

func wrap(head, body []byte) []byte {
	head = append(head, `,"type":"event","payload":`...)
	if len(body) > 0 && json.Valid(body) {
		head = append(head, body...)
	} else {
		head = append(head, mustJSON(string(body))...)
	}
	return append(head, '}')
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("frame: " + err.Error()) // only called with values that always marshal
	}
	return b
}
