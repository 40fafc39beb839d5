package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// bindReply is the answer to a conn.<cid>.bind request.
type bindReply struct {
	OK        bool   `json:"ok"`
	ThreadID  string `json:"thread_id"`
	Replayed  int    `json:"replayed"`
	Recovered bool   `json:"recovered"`
	Epoch     string `json:"epoch"`
	Error     *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func requestBind(t testing.TB, ag *agent, cid, body string) (bindReply, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := ag.nc.RequestWithContext(ctx, "conn."+cid+".bind", []byte(body))
	if err != nil {
		t.Fatalf("request conn.%s.bind %s: %v", cid, body, err)
	}
	var r bindReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("reply to conn.%s.bind %s is not JSON: %s", cid, body, m.Data)
	}
	return r, string(m.Data)
}

// Scenario f: the backend binds a connection through conn.<cid>.bind and
// sends it a frame of its own through conn.<cid>.out. Frames of an unbound
// connection reach conn.<cid>.in; once bound, thread.<tid>.in.
func TestBackendBindAndDirectFrame(t *testing.T) {
	t.Parallel()
	const tid, tid2, sidecarID = "thread_f", "thread_f2", "e2e-f"
	sc := startSidecar(t, sidecarConfig{Args: []string{"--sidecar-id", sidecarID}})
	ag := newAgent(t, sc.NATSURL)
	c := dial(t, sc, "client", dialOptions{})

	// Unbound: the legacy first message goes to conn.<cid>.in, unchanged.
	sub, err := ag.nc.SubscribeSync("conn." + c.CID + ".in")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := ag.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	startAgent := `{"type":"start_agent","payload":{"user_request":"plan a trip","thread_id":null,"context":{},"settings":{}}}`
	c.send(startAgent)
	m, err := sub.NextMsg(waitTimeout)
	if err != nil {
		t.Fatalf("start_agent of an unbound connection not seen on conn.%s.in: %v", c.CID, err)
	}
	checkInbound(t, m, "conn."+c.CID+".in", startAgent, c.CID, sidecarID)

	// The backend decides the thread.
	before := ag.mustPublish(t, tid, 5)
	r, raw := requestBind(t, ag, c.CID, `{"thread_id":"`+tid+`"}`)
	if !r.OK || r.ThreadID != tid || r.Replayed != 5 || !r.Recovered || r.Epoch == "" || r.Error != nil {
		t.Fatalf("bind reply %s, want ok, thread %s, replayed 5, recovered, an epoch", raw, tid)
	}
	b := c.expectBound(tid)
	if b.Replayed != 5 || b.Epoch != r.Epoch {
		t.Fatalf("thread_bound %+v after bind reply %s", b, raw)
	}
	c.expectEvents(tid, before)
	c.expectEvents(tid, ag.mustPublish(t, tid, 3))

	// A frame for this connection only, delivered as is.
	direct := `{"type":"notice","payload":{"text":"only for you","n":[1,2,3]}}`
	if err := ag.nc.Publish("conn."+c.CID+".out", []byte(direct)); err != nil {
		t.Fatal(err)
	}
	if f := c.next(); string(f.Raw) != direct || f.Binary {
		t.Fatalf("conn.<cid>.out delivered %s, want the text frame %s unchanged", f, direct)
	}

	// Bound now: a frame naming no thread goes to thread.<tid>.in.
	stop := `{"type":"stop_agent","payload":{}}`
	c.send(stop)
	subject := "thread." + tid + ".in"
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := waitUntil(ctx, func() bool { return ag.countMsgs(t, subject) == 1 }); err != nil {
		t.Fatalf("stop_agent of a connection bound by the backend not stored on %s: %v", subject, err)
	}
	in := ag.lastMsg(t, subject)
	checkInbound(t, &nats.Msg{Subject: in.Subject, Data: in.Data, Header: in.Header}, subject, stop, c.CID, sidecarID)

	// Rebind elsewhere with since; the old thread stops reaching the client.
	seqs2 := ag.mustPublish(t, tid2, 6)
	r, raw = requestBind(t, ag, c.CID, fmt.Sprintf(`{"thread_id":"%s","since":%d}`, tid2, seqs2[2]))
	if !r.OK || r.ThreadID != tid2 || r.Replayed != 3 || !r.Recovered {
		t.Fatalf("bind reply %s, want ok, thread %s, replayed 3", raw, tid2)
	}
	if b := c.expectBound(tid2); b.Replayed != 3 {
		t.Fatalf("thread_bound %+v, want replayed 3", b)
	}
	c.expectEvents(tid2, seqs2[3:])
	ag.mustPublish(t, tid, 2)
	c.expectEvents(tid2, ag.mustPublish(t, tid2, 2))
	c.expectQuiet()

	// Bad requests are answered with an error and change nothing.
	for _, body := range []string{`{"thread_id":"a.b"}`, `{"thread_id":">"}`, `{"thread_id":""}`, `{}`, `not json`} {
		r, raw := requestBind(t, ag, c.CID, body)
		if r.OK || r.Error == nil || r.Error.Code == "" || r.Error.Message == "" {
			t.Errorf("bind %s answered %s, want {\"error\":{\"code\":...,\"message\":...}}", body, raw)
		} else {
			t.Logf("bind %s -> %s", body, raw)
		}
	}
	// The backend's mistakes are answered to the backend only: the client
	// sees nothing but the next event.
	ev := ag.mustPublish(t, tid2, 1)
	if f := c.next(); !f.isEvent() || f.ThreadID != tid2 || f.Seq != ev[0] {
		t.Fatalf("after bad bind requests the client received %s, want the event %d of %s", f, ev[0], tid2)
	}
	c.expectQuiet()
}
