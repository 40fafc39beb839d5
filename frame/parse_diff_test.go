package frame

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/threadbus/threadbus/subjects"
)

// parseSeeds are frames where a single-pass parser could plausibly differ
// from decoding maps.
var parseSeeds = []string{
	// FuzzParse's seeds.
	`{"type":"user_message","payload":{"thread_id":"t"}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":3}}`,
	`{"type":"m","thread_id":"a.b"}`, `[]`, `nul`, `{"type":"ping"}`,
	// Duplicate keys: the last wins, also for a payload that is replaced.
	`{"type":"a","type":"b"}`,
	`{"type":"a","type":5}`,
	`{"type":"m","payload":{"thread_id":"x"},"payload":{}}`,
	`{"type":"m","payload":{"thread_id":"x"},"payload":"s"}`,
	`{"type":"m","payload":{"thread_id":"a.b"},"payload":{"thread_id":"ok"}}`,
	`{"type":"m","payload":{"thread_id":"x","thread_id":null},"thread_id":"top"}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":1,"since":null}}`,
	// Escaped keys and values; keys match case-sensitively.
	`{"typ\u0065":"m","payload":{"thread_\u0069d":"t\u0031"}}`,
	`{"type":"m","payload":{"Thread_ID":"x"},"THREAD_ID":"y"}`,
	`{"\u0074ype":"\u0070ing"}`,
	`{"type":"switch_thread","p\u0061yload":{"thread_id":"t","\u0073ince":4,"epoc\u0068":"e"}}`,
	`{"type":"m","":"x","\"":1,"payload\u0000":{"thread_id":"x"}}`,
	`{"type":"m","\ud83d\ude00":1,"thread_id":"\ud83d\ude00"}`,
	`{"type":"m","thread_id":"\u00e9"}`,
	`{"type":"m","thread_id":"a\/b"}`,
	`{"type":"m","thread_id":"\ud800"}`,
	"{\"type\":\"m\",\"thread_id\":\"\xff\"}",
	"{\"type\":\"\xffm\"}",
	"{\"type\\u0000\":\"m\"}",
	`{"type":"switch_thread","payload":{"thread_id":"t","epoch":"\u0065\n"}}`,
	// Nesting, and payloads that are not objects.
	`{"type":"m","payload":{"a":{"thread_id":"x"},"b":[{"thread_id":"y"}]},"c":{"payload":{"thread_id":"z"}}}`,
	`{"a":[[[{}]]],"type":"m","payload":[{"thread_id":"x"}]}`,
	`{"type":"m","payload":null,"thread_id":"t"}`,
	`{"type":"m","payload":"{\"thread_id\":\"x\"}"}`,
	`{"type":"m","payload":{"payload":{"thread_id":"x"},"type":"y"}}`,
	// since and epoch.
	`{"type":"switch_thread","payload":{"thread_id":"t","since":1e3}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":-1}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":1.0}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":-0}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":18446744073709551615}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":18446744073709551616}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":99999999999999999999999}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":"5"}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":null,"epoch":null}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":0,"epoch":7}}`,
	`{"type":"switch_thread","payload":{"thread_id":"t","since":[1]}}`,
	`{"type":"switch_thread","thread_id":"t","since":1}`,
	`{"type":"switch_thread","payload":{"thread_id":null}}`,
	// Nulls and other types.
	`{"type":null}`, `{"type":true,"payload":{}}`, `{"type":"m","thread_id":false}`,
	`{"type":"m","payload":{"thread_id":{"x":1}}}`,
	`{"type":"m","thread_id":"` + strings.Repeat("x", 200) + `"}`,
	`{"type":"m","thread_id":[` + strings.Repeat(`"x",`, 30) + `"x"]}`,
	// Whitespace, BOM and invalid JSON.
	" \t\r\n{ \"type\" : \"m\" , \"payload\" : { \"thread_id\" : \"t\" } } \n",
	"\ufeff{\"type\":\"m\"}",
	"{\"type\":\"m\"}\x00", "{\"type\":\"m\"}\f", "\v{\"type\":\"m\"}",
	`{"type":"m"}{}`, `{"type":"m",}`, `{"type":"m" "x":1}`, `{"type":"m","a":01}`,
	`{"type":"m","a":1.}`, `{"type":"m","a":.5}`, `{"type":"m","a":1e}`, `{"type":"m","a":-}`,
	`{"type":"m","a":tru}`, `{"type":"m","a":nulll}`, `{"type":"m","a":"\x"}`, `{"type":"m","a":"\u12"}`,
	"{\"type\":\"m\",\"a\":\"\t\"}", `{"type":"m","a":[1,]}`, `{"type":"m","a":[,1]}`, `{"type":"m","a":{"b"}}`,
	`{"type":"m","a":{"b":}}`, `{"type":"m","a":{1:2}}`, `{"type":"m","a":]`, `{"type":"m"`, `{"type"`,
	`{`, `}`, `[`, `"`, `-0`, `1e5`, `true`, ` `, "",
	// Routing keys repeated or in another case (ſ folds to s, K to k).
	`{"type":"m","payload":{"thread_id":"mine","THREAD_ID":"victim"}}`,
	`{"type":"m","payload":{"thread_id":"mine"},"Payload":{"thread_id":"victim"}}`,
	`{"type":"m","Type":"n"}`, `{"TYPE":"m"}`, `{"type":"m","thread_id":"a","thread_id":"a"}`,
	`{"type":"m","since":1,"since":2}`, `{"type":"m","Epoch":"e"}`, `{"type":"m","sınce":1}`,
	`{"type":"m","payload":{"ſince":1}}`, `{"type":"m","payload":{"\u017fince":1}}`,
	`{"type":"m","payload":{"since":1,"since":1}}`, `{"type":"m","payload":{"EPOCH":"e"}}`,
	`{"type":"m","payload":{"type":"a","TYPE":"b","Payload":1,"payload":2}}`,
	`{"type":"m","payload":{"a":{"thread_id":"x","THREAD_ID":"y"}}}`,
	`{"type":"m","t\u0079pe":"n"}`, `{"type":"m","thread_Id":null}`,
	`{"type":"m","payload":1,"payload":{"THREAD_ID":"x"}}`,
	// Top-level and payload thread ids.
	`{"type":"m","thread_id":"a","payload":{"thread_id":"b"}}`,
	`{"type":"m","thread_id":"a","payload":{"thread_id":"a"}}`,
	`{"type":"m","thread_id":123,"payload":{"thread_id":"a"}}`,
	`{"type":"m","thread_id":{"x":1},"payload":{"thread_id":"a"}}`,
	`{"type":"m","thread_id":"a.b","payload":{"thread_id":"a"}}`,
	`{"type":"m","thread_id":null,"payload":{"thread_id":"a"}}`,
	`{"type":"switch_thread","thread_id":"b","payload":{"thread_id":"a"}}`,
	// Invalid UTF-8 anywhere, also outside strings' JSON rules.
	"{\"type\":\"m\",\"content\":\"\xc3\x28\"}", "{\"type\":\"m\"}\xff", "\xed\xa0\x80",
	// Depth around MaxDepth.
	`{"type":"m","a":` + strings.Repeat("[", 62) + strings.Repeat("]", 62) + `}`,
	`{"type":"m","a":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`,
	`{"type":"m","payload":{"a":` + strings.Repeat("[", 61) + strings.Repeat("]", 61) + `}}`,
	`{"type":"m","payload":{"a":` + strings.Repeat("[", 62) + strings.Repeat("]", 62) + `}}`,
	`{"type":"m","payload":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`,
	`{"type":"m","payload":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`,
	strings.Repeat("[", 64) + strings.Repeat("]", 64),
	strings.Repeat("[", 65) + strings.Repeat("]", 65),
	`{"type":"m","a":` + strings.Repeat("[", 70) + `x`,
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	`{"type":"m","a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`,
	`{"type":"m","a":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`,
	`{"type":"m","payload":{"a":` + strings.Repeat(`{"b":`, 9998) + `1` + strings.Repeat("}", 9998) + `}}`,
	`{"type":"m","payload":{"a":` + strings.Repeat(`{"b":`, 9999) + `1` + strings.Repeat("}", 9999) + `}}`,
}

func FuzzParseDifferential(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	for _, fr := range benchFrames {
		f.Add(fr.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		compareParse(t, data)
	})
}

// TestParseMatchesReference runs the seeds without -fuzz, and checks the
// scanner's validity verdict against json.Valid on its own.
func TestParseMatchesReference(t *testing.T) {
	for _, s := range parseSeeds {
		compareParse(t, []byte(s))
	}
}

func compareParse(t *testing.T, data []byte) {
	t.Helper()
	want, wantErr := parseReference(data)
	got, gotErr := Parse(data)
	if got.Type != want.Type || got.ThreadID != want.ThreadID || got.Epoch != want.Epoch ||
		string(got.Raw) != string(want.Raw) || len(got.Raw) != len(want.Raw) ||
		(got.Since == nil) != (want.Since == nil) || got.Since != nil && *got.Since != *want.Since {
		t.Fatalf("Parse(%q) = %s, reference %s", clip(data), show(got), show(want))
	}
	if (gotErr == nil) != (wantErr == nil) || gotErr != nil && gotErr.Error() != wantErr.Error() {
		t.Fatalf("Parse(%q) error %v, reference %v", clip(data), gotErr, wantErr)
	}
	for _, sentinel := range []error{ErrNotJSON, ErrNotObject, ErrInvalidSince, subjects.ErrInvalidThreadID} {
		if errors.Is(gotErr, sentinel) != errors.Is(wantErr, sentinel) {
			t.Fatalf("Parse(%q) error %v, reference %v: differ on %v", clip(data), gotErr, wantErr, sentinel)
		}
	}
	var m members
	if ok := scanFrame(data, &m); ok != json.Valid(data) && !(m.tooDeep && !ok) {
		t.Fatalf("scanFrame(%q) = %v, json.Valid %v", clip(data), ok, json.Valid(data))
	}
	if m.tooDeep != (json.Valid(data) && refDepth(data) > MaxDepth) && json.Valid(data) {
		t.Fatalf("scanFrame(%q): tooDeep %v, depth %d", clip(data), m.tooDeep, refDepth(data))
	}
}

func show(c Client) string {
	since := "nil"
	if c.Since != nil {
		since = strings.TrimSpace(string(mustJSON(*c.Since)))
	}
	return string(mustJSON(map[string]string{"type": c.Type, "thread_id": c.ThreadID, "since": since, "epoch": c.Epoch}))
}
