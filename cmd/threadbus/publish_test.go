package main

import (
	"strings"
	"testing"
)

func TestWithType(t *testing.T) {
	tests := []struct{ body, typ, want, err string }{
		{`{}`, "agent_started", `{"type":"agent_started"}`, ""},
		{`{"type":"old","run_id":"r1","payload":{"a":[1,2]}}`, "agent_thinking", `{"type":"agent_thinking","run_id":"r1","payload":{"a":[1,2]}}`, ""},
		{`{"z":1,"a":2}`, "x", `{"type":"x","z":1,"a":2}`, ""},
		{`{"n":12345678901234567890}`, "x", `{"type":"x","n":12345678901234567890}`, ""},
		{`{"k":"\u00e9\n"}`, `"q"`, `{"type":"\"q\"","k":"\u00e9\n"}`, ""},
		{`[1]`, "x", "", "not an object"},
		{`{"a":1} {}`, "x", "", "data after the object"},
		{`{"a":`, "x", "", "EOF"},
		{``, "x", "", "empty"},
		{`nope`, "x", "", "invalid character"},
	}
	for _, tt := range tests {
		got, err := withType([]byte(tt.body), tt.typ)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("withType(%s, %q) = %s, %v; want an error with %q", tt.body, tt.typ, got, err, tt.err)
			}
			continue
		}
		if err != nil || string(got) != tt.want {
			t.Errorf("withType(%s, %q) = %s, %v; want %s", tt.body, tt.typ, got, err, tt.want)
		}
	}
}

func FuzzWithType(f *testing.F) {
	f.Add([]byte(`{"type":"a","payload":{}}`), "t")
	f.Fuzz(func(t *testing.T, body []byte, typ string) {
		out, err := withType(body, typ)
		if err != nil {
			return
		}
		ms, err := objectMembers(out)
		if err != nil || len(ms) == 0 || ms[0].key != "type" {
			t.Fatalf("withType(%q, %q) = %s: not an object starting with type (%v)", body, typ, out, err)
		}
	})
}
