package frame

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/threadbus/threadbus/subjects"
)

func TestParseLegacyFrames(t *testing.T) {
	tests := []struct {
		in     string
		typ    string
		thread string
	}{
		{`{"type":"start_agent","payload":{"user_request":"hi","thread_id":null,"context":{},"settings":{}}}`, "start_agent", ""},
		{`{"type":"user_message","payload":{"content":"x","references":[],"thread_id":"thread_ab12"}}`, "user_message", "thread_ab12"},
		{`{"type":"switch_thread","payload":{"thread_id":"thread_cd34"}}`, "switch_thread", "thread_cd34"},
		{`{"type":"stop_agent","payload":{}}`, "stop_agent", ""},
		{`{"type":"ping","timestamp":1764300000000,"connection_id":"abc"}`, "ping", ""},
		{`{"type":"user_message","thread_id":"top","payload":{"content":"x"}}`, "user_message", "top"},
		{`{"type":"user_message","thread_id":"same","payload":{"thread_id":"same"}}`, "user_message", "same"},
		{`{"type":"user_message","thread_id":"top","payload":{"thread_id":null}}`, "user_message", "top"},
		{`{"type":"x","payload":"not an object"}`, "x", ""},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(tt.in))
		if err != nil {
			t.Errorf("Parse(%s): %v", tt.in, err)
			continue
		}
		if c.Type != tt.typ || c.ThreadID != tt.thread || string(c.Raw) != tt.in {
			t.Errorf("Parse(%s) = %+v; want type %q thread %q", tt.in, c, tt.typ, tt.thread)
		}
	}
}

func TestParseSwitchSince(t *testing.T) {
	c, err := Parse([]byte(`{"type":"switch_thread","payload":{"thread_id":"t","since":42,"epoch":"e1"}}`))
	if err != nil || c.Since == nil || *c.Since != 42 || c.Epoch != "e1" {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
	if _, err := Parse([]byte(`{"type":"switch_thread","payload":{"thread_id":"t","since":-1}}`)); !errors.Is(err, ErrInvalidSince) {
		t.Fatalf("negative since: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in   string
		code string
	}{
		{`not json`, CodeInvalidJSON},
		{`{"type":`, CodeInvalidJSON},
		{``, CodeInvalidJSON},
		{`[1,2]`, CodeInvalidFrame},
		{`"str"`, CodeInvalidFrame},
		{`{}`, CodeInvalidFrame},
		{`{"type":""}`, CodeInvalidFrame},
		{`{"type":5}`, CodeInvalidFrame},
		{`{"type":"m","payload":{"thread_id":"a.b"}}`, CodeInvalidThreadID},
		{`{"type":"m","payload":{"thread_id":"*"}}`, CodeInvalidThreadID},
		{`{"type":"m","payload":{"thread_id":">"}}`, CodeInvalidThreadID},
		{`{"type":"m","payload":{"thread_id":"a b"}}`, CodeInvalidThreadID},
		{`{"type":"m","payload":{"thread_id":""}}`, CodeInvalidThreadID},
		{`{"type":"m","payload":{"thread_id":7}}`, CodeInvalidThreadID},
		{`{"type":"m","thread_id":"` + strings.Repeat("a", 129) + `"}`, CodeInvalidThreadID},
		{`{"type":"switch_thread","payload":{}}`, CodeInvalidThreadID},
		{`{"type":"m","thread_id":123,"payload":{"thread_id":"a"}}`, CodeInvalidThreadID},
		{`{"type":"m","thread_id":{"x":1},"payload":{"thread_id":"a"}}`, CodeInvalidThreadID},
		{`{"type":"m","thread_id":"top","payload":{"thread_id":"inner"}}`, CodeInvalidFrame},
		{`{"type":"m","payload":{"thread_id":"mine","THREAD_ID":"victim"}}`, CodeInvalidFrame},
		{`{"type":"m","type":"m"}`, CodeInvalidFrame},
		{`{"type":"m","payload":{"\u017fince":1}}`, CodeInvalidFrame},
		{`{"type":"m","a":` + strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth) + `}`, CodeInvalidFrame},
		{"{\"type\":\"m\",\"c\":\"\xff\"}", CodeInvalidFrame},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.in))
		if got := Code(err); err == nil || got != tt.code {
			t.Errorf("Parse(%s) = %v (code %q), want code %q", tt.in, err, got, tt.code)
		}
	}
	if Code(ErrBinary) != CodeBinaryFrame {
		t.Errorf("Code(ErrBinary) = %q", Code(ErrBinary))
	}
}

func TestEvent(t *testing.T) {
	tests := []struct {
		body string
		want string
	}{
		{`{"type":"agent_thinking","payload":{"step_number":2}}`, `{"thread_id":"t1","seq":7,"type":"agent_thinking","payload":{"step_number":2}}`},
		{`{}`, `{"thread_id":"t1","seq":7}`},
		{` { } `, `{"thread_id":"t1","seq":7}`},
		{`{"seq":1,"type":"x","thread_id":"other"}`, `{"thread_id":"t1","seq":7,"type":"x"}`},
		{`{"type":"x","payload":{"seq":1}}`, `{"thread_id":"t1","seq":7,"type":"x","payload":{"seq":1}}`},
		{`{"se\u0071":1,"a":"\u00e9"}`, `{"thread_id":"t1","seq":7,"a":"\u00e9"}`},
		{`[1,2]`, `{"thread_id":"t1","seq":7,"type":"event","payload":[1,2]}`},
		{`hello`, `{"thread_id":"t1","seq":7,"type":"event","payload":"hello"}`},
		{``, `{"thread_id":"t1","seq":7,"type":"event","payload":""}`},
	}
	for _, tt := range tests {
		if got := string(Event([]byte(tt.body), "t1", 7)); got != tt.want {
			t.Errorf("Event(%s) = %s, want %s", tt.body, got, tt.want)
		}
	}
}

func TestServerFrames(t *testing.T) {
	var b struct {
		Type     string `json:"type"`
		ThreadID string `json:"thread_id"`
		Payload  Bound  `json:"payload"`
	}
	if err := json.Unmarshal(ThreadBound(Bound{ThreadID: "t", Replayed: 3, Recovered: true, Epoch: "e"}), &b); err != nil {
		t.Fatal(err)
	}
	if b.Type != TypeThreadBound || b.ThreadID != "t" || b.Payload != (Bound{"t", 3, true, "e"}) {
		t.Fatalf("ThreadBound = %+v", b)
	}
	if got := string(Pong([]byte(`{"type":"ping","timestamp":17,"connection_id":"c"}`))); got != `{"type":"pong","timestamp":17}` {
		t.Fatalf("Pong = %s", got)
	}
	big := `"` + strings.Repeat("x", 1000) + `"`
	if got := string(Pong([]byte(`{"type":"ping","timestamp":1,"payload":` + big + `}`))); got != `{"type":"pong","timestamp":1}` {
		t.Fatalf("Pong echoes more than the timestamp: %s", got)
	}
	if got := string(Pong([]byte(`{"type":"ping","timestamp":` + big + `}`))); got != `{"type":"pong"}` {
		t.Fatalf("Pong echoes a large timestamp: %.80s", got)
	}
	if got := string(Error(CodeInvalidJSON, "x")); got != `{"payload":{"code":"invalid_json","message":"x"},"type":"error"}` {
		t.Fatalf("Error = %s", got)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"type":"user_message","payload":{"thread_id":"t"}}`,
		`{"type":"switch_thread","payload":{"thread_id":"t","since":3}}`,
		`{"type":"m","thread_id":"a.b"}`, `[]`, `nul`, `{"type":"ping"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if Code(err) == CodeInternal {
				t.Fatalf("Parse(%q): error without a client code: %v", data, err)
			}
			return
		}
		if c.Type == "" {
			t.Fatalf("Parse(%q) accepted a frame without type", data)
		}
		if c.ThreadID != "" {
			if err := subjects.ValidateThreadID(c.ThreadID); err != nil {
				t.Fatalf("Parse(%q) returned invalid thread id: %v", data, err)
			}
		}
	})
}

func FuzzEvent(f *testing.F) {
	for _, s := range []string{`{"type":"x"}`, `{"seq":"x","thread_id":1}`, `{}`, `1`, `"s"`, `{"a":{"seq":1}}`, "\xff"} {
		f.Add([]byte(s), uint64(3))
	}
	f.Fuzz(func(t *testing.T, body []byte, seq uint64) {
		out := Event(body, "t-1", seq)
		var m map[string]json.RawMessage
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("Event(%q) = %s: not a JSON object: %v", body, out, err)
		}
		var gotSeq uint64
		var gotTid string
		if json.Unmarshal(m["seq"], &gotSeq) != nil || gotSeq != seq || json.Unmarshal(m["thread_id"], &gotTid) != nil || gotTid != "t-1" {
			t.Fatalf("Event(%q) = %s: reserved keys wrong", body, out)
		}
	})
}

// TestParseFrameRules checks the rules that keep stored frames safe for
// agents to parse, each against its sentinel.
func TestParseFrameRules(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	tests := []struct {
		in   string
		want error
	}{
		{"{\"type\":\"m\",\"content\":\"\xc3\x28\"}", ErrInvalidUTF8},
		{"{\"type\":\"m\",\"\xff\":1}", ErrInvalidUTF8},
		{`{"type":"m","a":` + deep(MaxDepth) + `}`, ErrTooDeep},
		{`{"type":"m","payload":{"a":` + deep(MaxDepth-1) + `}}`, ErrTooDeep},
		{deep(MaxDepth + 1), ErrTooDeep},
		{`{"type":"m","payload":{"thread_id":"mine","THREAD_ID":"victim"}}`, ErrRepeatedKey},
		{`{"type":"m","payload":{"thread_id":"mine","thread_id":"victim"}}`, ErrRepeatedKey},
		{`{"type":"m","Thread_Id":"victim"}`, ErrRepeatedKey},
		{`{"type":"m","payload":{},"PAYLOAD":{}}`, ErrRepeatedKey},
		{`{"type":"m","since":1,"since":1}`, ErrRepeatedKey},
		{`{"type":"m","payload":{"ſince":1}}`, ErrRepeatedKey},
		{`{"type":"m","payload":{"epoch":"a","epoc\u0068":"b"}}`, ErrRepeatedKey},
		{`{"type":"m","thread_id":"victim","payload":{"thread_id":"mine"}}`, ErrThreadMismatch},
		{`{"type":"m","thread_id":123,"payload":{"thread_id":"mine"}}`, subjects.ErrInvalidThreadID},
	}
	for _, tt := range tests {
		if _, err := Parse([]byte(tt.in)); !errors.Is(err, tt.want) {
			t.Errorf("Parse(%.80q) = %v, want %v", tt.in, err, tt.want)
		}
	}
	// Allowed: exactly MaxDepth, repeats of keys that route nothing, and
	// routing keys nested below the payload.
	for _, in := range []string{
		`{"type":"m","a":` + deep(MaxDepth-1) + `}`,
		`{"type":"m","content":1,"content":2,"Content":3}`,
		`{"type":"m","payload":{"TYPE":1,"type":2,"a":{"thread_id":"x","THREAD_ID":"y"}}}`,
		`{"type":"m","thread_id":"t","payload":{"thread_id":"t"}}`,
		`{"type":"m","thread_id":null,"payload":{"thread_id":"t"}}`,
	} {
		if _, err := Parse([]byte(in)); err != nil {
			t.Errorf("Parse(%.80q) = %v, want no error", in, err)
		}
	}
}
