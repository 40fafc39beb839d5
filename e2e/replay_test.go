package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Scenario a: the agent publishes 50 events before the client connects; the
// client binds by sending a user_message with payload.thread_id and receives
// thread_bound, the 50 events in order, then live events, without a
// duplicate. The user_message itself is stored on thread.<tid>.in.
func TestReplayBeforeConnect(t *testing.T) {
	t.Parallel()
	const tid, sidecarID = "thread_ab12", "e2e-a"
	sc := startSidecar(t, sidecarConfig{Args: []string{"--sidecar-id", sidecarID}})
	ag := newAgent(t, sc.NATSURL)

	before := ag.mustPublish(t, tid, 50)

	c := dial(t, sc, "client", dialOptions{})
	msg := `{"type":"user_message","payload":{"content":"what is the status?","references":[],"thread_id":"` + tid + `"}}`
	c.send(msg)
	b := c.expectBound(tid)
	if b.Replayed != 50 || !b.Recovered {
		t.Fatalf("thread_bound = %+v, want replayed 50 and recovered true", b)
	}
	for i, f := range c.expectEvents(tid, before) {
		checkEventBody(t, f, ag.body(before[i]), tid)
	}

	// Live events, one of which tries to set the reserved keys itself.
	live := ag.mustPublish(t, tid, 9)
	spoof := []byte(`{"type":"agent_completed","thread_id":"someone_else","seq":1,"payload":{"result":"done"}}`)
	seq, err := ag.publish(context.Background(), tid, spoof)
	if err != nil {
		t.Fatal(err)
	}
	live = append(live, seq)
	got := c.expectEvents(tid, live)
	checkEventBody(t, got[len(got)-1], spoof, tid)

	// A ping is answered locally with its timestamp, and nothing else was queued.
	c.send(`{"type":"ping","timestamp":1764300000000,"connection_id":"` + c.CID + `"}`)
	if f := c.next(); !jsonEqual(f.Raw, []byte(`{"type":"pong","timestamp":1764300000000}`)) {
		t.Fatalf("ping answered with %s, want {\"type\":\"pong\",\"timestamp\":1764300000000}", f)
	}
	c.expectQuiet()

	// The user_message reached the thread's inbound subject, stored,
	// unchanged and with the headers; the pings did not.
	subject := "thread." + tid + ".in"
	ag.expectCount(t, subject, 1, "exactly the user_message (pings are not published)")
	if t.Failed() {
		t.FailNow()
	}
	m := ag.lastMsg(t, subject)
	checkInbound(t, &nats.Msg{Subject: m.Subject, Data: m.Data, Header: m.Header}, subject, msg, c.CID, sidecarID)
	if m.Sequence <= lastOf(before) {
		t.Errorf("user_message stored at seq %d, before the events it followed (last %d)", m.Sequence, lastOf(before))
	}
}

// checkEventBody fails unless an event frame is the published JSON object
// with thread_id and seq set by the sidecar, and nothing else changed.
func checkEventBody(t testing.TB, f frame, published []byte, tid string) {
	t.Helper()
	var got, want map[string]any
	if err := json.Unmarshal(f.Raw, &got); err != nil {
		t.Fatalf("event %s: %v", f, err)
	}
	if err := json.Unmarshal(published, &want); err != nil {
		t.Fatalf("published %s: %v", published, err)
	}
	if got["thread_id"] != tid {
		t.Errorf("event %s: thread_id %v, want %q", f, got["thread_id"], tid)
	}
	if _, ok := got["seq"].(float64); !ok {
		t.Errorf("event %s: seq is %T, want a number", f, got["seq"])
	}
	delete(got, "thread_id")
	delete(got, "seq")
	delete(want, "thread_id")
	delete(want, "seq")
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Errorf("event body changed in delivery:\n got %s\nwant %s (plus thread_id and seq)", gb, wb)
	}
}

// bPlan is how one client of scenario b binds and what it must receive.
type bPlan struct {
	name      string
	mode      int
	trigger   int           // bind once the publisher has published this many events
	bindDelay time.Duration // between connect and the binding frame

	c         *client
	since     *uint64 // nil: the replay starts from (bind window - grace)
	win       window  // when the sidecar took the time the replay starts from
	minReplay int     // events > since acked before binding: replayed, not live
	err       error
}

const (
	bByQuery       = iota // ?thread_id=T at connect
	bByUserMessage        // connect, then a user_message with payload.thread_id
	bByTopLevel           // connect, then a frame with a top-level thread_id
	bBySince              // ?thread_id=T&since=S
	bBySwitch             // ?thread_id=<decoy>, then switch_thread to T, with or without since
	bModes
)

// Scenario b: a publisher sends 4,000 events in bursts while 20 clients bind
// at random moments, in every way the contract allows. Each client must receive a
// gapless, duplicate-free, ordered run from its replay start to the last
// event. The replay grace is 1s, so replay starts differ and the grace rule
// itself is checked against the stream's timestamps.
func TestContinuousPublishRandomBinds(t *testing.T) {
	const (
		tid      = "thread_b"
		total    = 4000
		nClients = 20
		grace    = time.Second
	)
	r := newRand(t)
	sc := startSidecar(t, sidecarConfig{Args: []string{"--replay-grace", grace.String()}})
	ag := newAgent(t, sc.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	plans := make([]*bPlan, nClients)
	for i := range plans {
		plans[i] = &bPlan{
			name:      fmt.Sprintf("client%02d", i),
			mode:      i % bModes,
			trigger:   r.IntN(total * 8 / 10),
			bindDelay: time.Duration(r.IntN(300)) * time.Millisecond,
		}
	}

	var published atomic.Int64
	var pubDone time.Time // written by the publisher before it sends on pubErr
	pubErr := make(chan error, 1)
	pr := childRand(r)
	start := time.Now()
	go func() {
		err := func() error {
			body := ag.event(tid, "agent_thinking", 100)
			for n := 0; n < total; {
				burst := make([][]byte, min(1+pr.IntN(20), total-n))
				for i := range burst {
					burst[i] = body
				}
				if _, err := ag.publishAsync(ctx, tid, burst); err != nil {
					return err
				}
				n += len(burst)
				published.Store(int64(n))
				// Shapes the load into bursts; nothing waits on it.
				if err := sleepCtx(ctx, time.Duration(pr.IntN(4))*time.Millisecond); err != nil {
					return err
				}
			}
			return nil
		}()
		pubDone = time.Now()
		pubErr <- err
	}()

	var wg sync.WaitGroup
	for i, p := range plans {
		cr := childRand(r)
		wg.Go(func() { p.err = bindB(ctx, t, sc, ag, p, i, cr, &published) })
	}
	wg.Wait()
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	for _, p := range plans {
		if p.err != nil {
			t.Fatalf("%s: %v", p.name, p.err)
		}
	}

	want := ag.expected(tid)
	last := lastOf(want)
	for _, p := range plans {
		err := p.c.waitFor(60*time.Second, func(frames []frame, _ error) bool {
			return len(frames) > 0 && frames[len(frames)-1].Seq == last && frames[len(frames)-1].isEvent()
		})
		if err != nil {
			t.Errorf("%s never received the last event (seq %d): %v", p.name, last, err)
		}
	}
	delivered := time.Now()
	if t.Failed() {
		for _, p := range plans {
			frames, _ := p.c.snapshot()
			ev := seqsOf(events(frames))
			t.Logf("%s (mode %d): %d events, first %v, last %d", p.name, p.mode, len(ev), firstN(ev, 3), lastOf(ev))
		}
		t.FailNow()
	}

	var sum int
	for _, p := range plans {
		if err := p.c.barrier(waitTimeout); err != nil {
			t.Fatal(err)
		}
		sum += checkB(ctx, t, ag, p, want)
	}
	elapsed := delivered.Sub(start)
	t.Logf("scenario b: %d events published in %v (%.0f/s); %d clients bound at random moments; %d events delivered in %v from the first publish to the last delivery: %.0f events/s; last delivery %v after the last ack",
		len(want), pubDone.Sub(start).Round(time.Millisecond), float64(len(want))/pubDone.Sub(start).Seconds(),
		nClients, sum, elapsed.Round(time.Millisecond), float64(sum)/elapsed.Seconds(), delivered.Sub(pubDone).Round(time.Millisecond))
}

// bindB connects and binds one client of scenario b once the publisher has
// published p.trigger events.
func bindB(ctx context.Context, t *testing.T, sc *sidecar, ag *agent, p *bPlan, i int, r *rand.Rand, published *atomic.Int64) error {
	const tid = "thread_b"
	if err := waitUntil(ctx, func() bool { return published.Load() >= int64(p.trigger) }); err != nil {
		return err
	}
	pickSince := func() *uint64 {
		acked := ag.expected(tid)
		k := r.IntN(len(acked) + 1)
		var s uint64
		if k > 0 {
			s = acked[k-1]
		}
		p.minReplay = len(acked) - k
		return &s
	}
	var err error
	switch p.mode {
	case bByQuery:
		p.c, err = tryDial(t, sc, p.name, dialOptions{Query: "thread_id=" + tid})
	case bBySince:
		p.since = pickSince()
		p.c, err = tryDial(t, sc, p.name, dialOptions{Query: fmt.Sprintf("thread_id=%s&since=%d", tid, *p.since)})
	case bByUserMessage, bByTopLevel:
		if p.c, err = tryDial(t, sc, p.name, dialOptions{}); err != nil {
			return err
		}
		if err := sleepCtx(ctx, p.bindDelay); err != nil {
			return err
		}
		msg := `{"type":"user_message","payload":{"content":"hi","references":[],"thread_id":"` + tid + `"}}`
		if p.mode == bByTopLevel {
			msg = `{"type":"stop_agent","thread_id":"` + tid + `","payload":{}}`
		}
		err = p.c.trySend(msg)
	case bBySwitch:
		decoy := fmt.Sprintf("decoy_%d", i)
		if p.c, err = tryDial(t, sc, p.name, dialOptions{Query: "thread_id=" + decoy}); err != nil {
			return err
		}
		if err := p.c.waitFor(waitTimeout, func(f []frame, _ error) bool { return countType(f, typeBound) == 1 }); err != nil {
			return err
		}
		if err := sleepCtx(ctx, p.bindDelay); err != nil {
			return err
		}
		msg := `{"type":"switch_thread","payload":{"thread_id":"` + tid + `"}}`
		if i/bModes%2 == 1 {
			p.since = pickSince()
			msg = fmt.Sprintf(`{"type":"switch_thread","payload":{"thread_id":"%s","since":%d}}`, tid, *p.since)
		}
		sent := time.Now()
		if err := p.c.trySend(msg); err != nil {
			return err
		}
		if err := p.c.waitFor(waitTimeout, func(f []frame, _ error) bool { return countType(f, typeBound) == 2 }); err != nil {
			return err
		}
		frames, _ := p.c.snapshot()
		p.win = window{sent, lastOfType(frames, typeBound).At}
		return nil
	}
	if err != nil {
		return err
	}
	// The first binding replays from the connection's open time.
	p.win = window{p.c.DialStart, p.c.Established}
	return p.c.waitFor(waitTimeout, func(f []frame, _ error) bool { return countType(f, typeBound) == 1 })
}

// checkB verifies one client of scenario b and returns how many events it received.
func checkB(ctx context.Context, t *testing.T, ag *agent, p *bPlan, want []uint64) int {
	t.Helper()
	frames, rerr := p.c.snapshot()
	if rerr != nil {
		t.Errorf("%s: connection ended: %v", p.name, rerr)
	}
	segs, orphans, err := segments(frames)
	if err != nil {
		t.Errorf("%s: %v", p.name, err)
		return 0
	}
	if len(orphans) > 0 {
		t.Errorf("%s: %d events before thread_bound, first %s", p.name, len(orphans), orphans[0])
	}
	wantSegs := 1
	if p.mode == bBySwitch {
		wantSegs = 2
	}
	if len(segs) != wantSegs {
		t.Errorf("%s: %d thread_bound frames, want %d", p.name, len(segs), wantSegs)
		return 0
	}
	if p.mode == bBySwitch && (segs[0].Bound.ThreadID == "thread_b" || len(segs[0].Events)+len(segs[0].Foreign) > 0) {
		t.Errorf("%s: decoy binding %+v received %d events", p.name, segs[0].Bound, len(segs[0].Events)+len(segs[0].Foreign))
	}
	seg := segs[len(segs)-1]
	if seg.Bound.ThreadID != "thread_b" || len(seg.Foreign) > 0 {
		t.Errorf("%s: binding %+v with %d events of other threads", p.name, seg.Bound, len(seg.Foreign))
		return 0
	}
	got := seqsOf(seg.Events)
	if len(got) == 0 {
		t.Errorf("%s: no events", p.name)
		return 0
	}
	var startIdx int
	if p.since != nil {
		startIdx = indexAfter(want, *p.since)
		if seg.Bound.Replayed < p.minReplay {
			t.Errorf("%s: thread_bound replayed %d, but %d events after since=%d were stored before it bound", p.name, seg.Bound.Replayed, p.minReplay, *p.since)
		}
	} else {
		startIdx = indexAfter(want, got[0]) - 1
		if err := checkReplayStart(ctx, ag, want, got[0], p.win, time.Second); err != nil {
			t.Errorf("%s (mode %d): %v", p.name, p.mode, err)
		}
	}
	if err := checkRun(want, got, startIdx); err != nil {
		t.Errorf("%s (mode %d, since %v): %v", p.name, p.mode, derefOr(p.since), err)
	} else if n := len(want) - startIdx; len(got) != n {
		t.Errorf("%s: received %d events, want %d (seq %d to %d)", p.name, len(got), n, want[startIdx], lastOf(want))
	}
	if seg.Bound.Replayed > len(got) || !seg.Bound.Recovered {
		t.Errorf("%s: thread_bound %+v after which %d events arrived", p.name, seg.Bound, len(got))
	}
	return len(got)
}

func countType(frames []frame, typ string) int {
	n := 0
	for _, f := range frames {
		if f.Type == typ {
			n++
		}
	}
	return n
}

func lastOfType(frames []frame, typ string) frame {
	for i := len(frames) - 1; i >= 0; i-- {
		if frames[i].Type == typ {
			return frames[i]
		}
	}
	return frame{}
}

func firstN(s []uint64, n int) []uint64 { return s[:min(n, len(s))] }

func derefOr(p *uint64) any {
	if p == nil {
		return "none"
	}
	return *p
}

// sleepCtx waits d or until ctx ends. Tests use it to shape load (random
// delays between actions), never to wait for the sidecar.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
