package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// Scenario g: every kind of bad input gets its documented answer, the
// connection stays open and bound as before, nothing is published, and
// another connection on the same thread keeps receiving.
func TestBadInput(t *testing.T) {
	t.Parallel()
	const tid = "thread_g"
	sc := startSidecar(t, sidecarConfig{})
	ag := newAgent(t, sc.NATSURL)

	victim := dial(t, sc, "victim", dialOptions{Query: "thread_id=" + tid})
	victim.expectBound(tid)
	observer := dial(t, sc, "observer", dialOptions{Query: "thread_id=" + tid})
	observer.expectBound(tid)

	userMsg := func(tidJSON string) string {
		return `{"type":"user_message","payload":{"content":"x","references":[],"thread_id":` + tidJSON + `}}`
	}
	long := strings.Repeat("t", 129)
	cases := []struct {
		name   string
		msg    string
		binary bool
		code   string
	}{
		{name: "plain text", msg: `hello there`, code: "invalid_json"},
		{name: "truncated JSON", msg: `{"type":"user_message","payload":`, code: "invalid_json"},
		{name: "empty text frame", msg: ``, code: "invalid_json"},
		{name: "JSON array", msg: `[{"type":"user_message"}]`, code: "invalid_frame"},
		{name: "JSON string", msg: `"user_message"`, code: "invalid_frame"},
		{name: "JSON number", msg: `42`, code: "invalid_frame"},
		{name: "JSON null", msg: `null`, code: "invalid_frame"},
		{name: "object without type", msg: `{"payload":{"thread_id":"thread_g"}}`, code: "invalid_frame"},
		{name: "empty type", msg: `{"type":"","payload":{}}`, code: "invalid_frame"},
		{name: "numeric type", msg: `{"type":7,"payload":{}}`, code: "invalid_frame"},
		{name: "binary frame", msg: `{"type":"user_message","payload":{}}`, binary: true, code: "binary_frame"},
		{name: "thread id with a dot", msg: userMsg(`"a.b"`), code: "invalid_thread_id"},
		{name: "thread id *", msg: userMsg(`"*"`), code: "invalid_thread_id"},
		{name: "thread id >", msg: userMsg(`">"`), code: "invalid_thread_id"},
		{name: "thread id with a space", msg: userMsg(`"a b"`), code: "invalid_thread_id"},
		{name: "empty thread id", msg: userMsg(`""`), code: "invalid_thread_id"},
		{name: "thread id of 129 characters", msg: userMsg(`"` + long + `"`), code: "invalid_thread_id"},
		{name: "numeric thread id", msg: userMsg(`7`), code: "invalid_thread_id"},
		{name: "object thread id", msg: userMsg(`{"id":"thread_g"}`), code: "invalid_thread_id"},
		{name: "top-level thread id with a dot", msg: `{"type":"user_message","thread_id":"a.b","payload":{"content":"x"}}`, code: "invalid_thread_id"},
		{name: "top-level thread id >", msg: `{"type":"stop_agent","thread_id":"thread.>","payload":{}}`, code: "invalid_thread_id"},
		{name: "switch_thread to a.b", msg: `{"type":"switch_thread","payload":{"thread_id":"a.b"}}`, code: "invalid_thread_id"},
		{name: "switch_thread to *", msg: `{"type":"switch_thread","payload":{"thread_id":"*"}}`, code: "invalid_thread_id"},
		{name: "switch_thread without thread", msg: `{"type":"switch_thread","payload":{}}`, code: "invalid_thread_id"},
	}
	var sent []uint64
	for _, tc := range cases {
		if tc.binary {
			victim.sendBinary([]byte(tc.msg))
		} else {
			victim.send(tc.msg)
		}
		p := victim.expectError(tc.code)
		t.Logf("%-30s -> %s: %s", tc.name, tc.code, p.Message)
		// Still open, still bound to tid.
		ev := ag.mustPublish(t, tid, 1)
		victim.expectEvents(tid, ev)
		sent = append(sent, ev...)
	}
	if n := ag.countMsgs(t, "thread.*.in"); n != 0 {
		t.Errorf("the stream holds %d inbound frames after only bad input, want 0", n)
	}

	// The limits are inclusive: a 128-character thread id binds.
	id128 := strings.Repeat("T", 128)
	victim.send(userMsg(`"` + id128 + `"`))
	victim.expectBound(id128)
	victim.send(fmt.Sprintf(`{"type":"switch_thread","payload":{"thread_id":"%s","since":%d}}`, tid, lastOf(sent)))
	if b := victim.expectBound(tid); b.Replayed != 0 {
		t.Fatalf("switch back since the last event: thread_bound %+v, want replayed 0", b)
	}

	// A frame of exactly the default limit (64 KiB) is accepted and published.
	sized := func(n int) string {
		head := `{"type":"user_message","payload":{"content":"`
		tail := `","references":[],"thread_id":"` + tid + `"}}`
		return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	}
	atLimit := sized(65536)
	victim.send(atLimit)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := waitUntil(ctx, func() bool { return ag.countMsgs(t, "thread."+tid+".in") == 1 }); err != nil {
		frames, rerr := victim.snapshot()
		t.Fatalf("a frame of exactly 65536 bytes was not published (%v); last frame %s, connection: %v", err, lastFrame(frames), rerr)
	}
	if m := ag.lastMsg(t, "thread."+tid+".in"); string(m.Data) != atLimit {
		t.Fatalf("the 64 KiB frame was stored changed (%d bytes)", len(m.Data))
	}
	ev := ag.mustPublish(t, tid, 1)
	victim.expectEvents(tid, ev)
	sent = append(sent, ev...)

	// One byte more closes the connection with 1009.
	victim.send(sized(65537))
	if ce := victim.expectClose(waitTimeout); ce.Code != websocket.StatusMessageTooBig {
		t.Fatalf("a 65537-byte frame closed the connection with %v, want status %d", ce, websocket.StatusMessageTooBig)
	}

	// The other connection on the thread saw every event and nothing else.
	sent = append(sent, ag.mustPublish(t, tid, 5)...)
	observer.expectEvents(tid, sent)
	observer.expectQuiet()

	// ?thread_id=a.b at connect: connection_established, then the error,
	// and the connection stays open and unbound.
	for _, bad := range []string{"a.b", "%3E", "a%20b", "%2A"} {
		c := dial(t, sc, "query "+bad, dialOptions{Query: "thread_id=" + bad})
		c.expectError("invalid_thread_id")
		sub, err := ag.nc.SubscribeSync("conn." + c.CID + ".in")
		if err != nil {
			t.Fatal(err)
		}
		if err := ag.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		c.send(`{"type":"stop_agent","payload":{}}`)
		if _, err := sub.NextMsg(waitTimeout); err != nil {
			t.Errorf("?thread_id=%s: a frame naming no thread did not reach conn.%s.in (the connection should be unbound): %v", bad, c.CID, err)
		}
		_ = sub.Unsubscribe()
		c.expectQuiet()
		c.close()
	}
}
