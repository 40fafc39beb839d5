package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// switchReq is one binding the client of scenario c asked for.
type switchReq struct {
	thread string
	how    string
	since  *uint64
	sent   time.Time
}

// Scenario c: a client switches among 3 threads 100 times, without waiting
// for thread_bound, while all 3 threads receive events. After each
// thread_bound it must never see another thread's event, and each binding's
// events are a gapless run from its replay start.
func TestRapidSwitching(t *testing.T) {
	const switches = 100
	grace := 30 * time.Second // the default
	threads := []string{"thread_c0", "thread_c1", "thread_c2"}
	r := newRand(t)
	// 100 switches in about half a second: far over the default frame and
	// bind rates (hostile_test.go covers those limits).
	sc := startSidecar(t, sidecarConfig{Args: []string{"--bind-rate=-1", "--frame-rate=-1"}})
	ag := newAgent(t, sc.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	for _, tid := range threads {
		ag.mustPublish(t, tid, 20)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, tid := range threads {
		pr := childRand(r)
		body := ag.event(tid, "tool_executing", 0)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := ag.publish(ctx, tid, body); err != nil {
					t.Error(err)
					return
				}
				if sleepCtx(ctx, time.Duration(2+pr.IntN(8))*time.Millisecond) != nil {
					return
				}
			}
		})
	}
	stopPublishers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopPublishers()

	c := dial(t, sc, "switcher", dialOptions{Query: "thread_id=" + threads[0]})
	reqs := []switchReq{{thread: threads[0], how: "query", sent: c.DialStart}}
	cur := 0
	for range switches {
		next := (cur + 1 + r.IntN(len(threads)-1)) % len(threads)
		tid := threads[next]
		req := switchReq{thread: tid}
		var msg string
		switch r.IntN(4) {
		case 0:
			req.how = "switch_thread"
			msg = `{"type":"switch_thread","payload":{"thread_id":"` + tid + `"}}`
		case 1:
			// Resume from the last event of tid the client has read so far.
			frames, _ := c.snapshot()
			var s uint64
			for _, f := range frames {
				if f.isEvent() && f.ThreadID == tid {
					s = f.Seq
				}
			}
			req.how, req.since = "switch_thread+since", &s
			msg = fmt.Sprintf(`{"type":"switch_thread","payload":{"thread_id":"%s","since":%d}}`, tid, s)
		case 2:
			req.how = "user_message"
			msg = `{"type":"user_message","payload":{"content":"next","references":[],"thread_id":"` + tid + `"}}`
		case 3:
			req.how = "top-level thread_id"
			msg = `{"type":"stop_agent","thread_id":"` + tid + `","payload":{}}`
		}
		req.sent = time.Now()
		c.send(msg)
		reqs = append(reqs, req)
		cur = next
		if err := sleepCtx(ctx, time.Duration(r.IntN(10))*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.waitFor(30*time.Second, func(f []frame, _ error) bool { return countType(f, typeBound) == len(reqs) }); err != nil {
		t.Fatalf("waiting for %d thread_bound frames: %v", len(reqs), err)
	}
	// Keep publishing a little after the last switch so the last binding
	// has live events too.
	final := reqs[len(reqs)-1].thread
	if err := c.waitFor(30*time.Second, func(f []frame, _ error) bool {
		n := 0
		for i := len(f) - 1; i >= 0 && f[i].Type != typeBound; i-- {
			n++
		}
		return n >= 20
	}); err != nil {
		t.Fatalf("last binding (%s) receives no events: %v", final, err)
	}
	stopPublishers()
	last := lastOf(ag.expected(final))
	if err := c.waitFor(30*time.Second, func(f []frame, _ error) bool {
		return len(f) > 0 && f[len(f)-1].isEvent() && f[len(f)-1].Seq == last
	}); err != nil {
		t.Fatalf("last binding never reached the last event of %s (seq %d): %v", final, last, err)
	}
	if err := c.barrier(waitTimeout); err != nil {
		t.Fatal(err)
	}

	frames, rerr := c.snapshot()
	if rerr != nil {
		t.Fatalf("connection ended: %v", rerr)
	}
	segs, orphans, err := segments(frames)
	if err != nil {
		t.Fatal(err)
	}
	if len(orphans) > 0 {
		t.Errorf("%d events before the first thread_bound, first %s", len(orphans), orphans[0])
	}
	if len(segs) != len(reqs) {
		t.Fatalf("%d thread_bound frames, want %d", len(segs), len(reqs))
	}
	var truncated, delivered int
	for k, seg := range segs {
		req := reqs[k]
		desc := fmt.Sprintf("binding %d (%s to %s, since %v)", k, req.how, req.thread, derefOr(req.since))
		if seg.Bound.ThreadID != req.thread {
			t.Errorf("%s: thread_bound for %q; thread_bound frames must follow the requests in order", desc, seg.Bound.ThreadID)
			continue
		}
		if len(seg.Foreign) > 0 {
			t.Errorf("%s: %d events of another thread after thread_bound, first %s", desc, len(seg.Foreign), seg.Foreign[0])
		}
		want := ag.expected(req.thread)
		got := seqsOf(seg.Events)
		delivered += len(got)
		isLast := k == len(segs)-1
		if len(got) < seg.Bound.Replayed {
			if isLast {
				t.Errorf("%s: thread_bound announced %d replayed events, %d arrived", desc, seg.Bound.Replayed, len(got))
			}
			// A later switch may cut a replay short: no event of this
			// thread may follow the next thread_bound.
			truncated++
		}
		if len(got) == 0 {
			if req.since != nil && indexAfter(want, *req.since) < len(want) && isLast {
				t.Errorf("%s: no events", desc)
			}
			continue
		}
		var start int
		if req.since != nil {
			start = indexAfter(want, *req.since)
		} else {
			start = indexAfter(want, got[0]) - 1
			w := window{req.sent, seg.At}
			if k == 0 {
				w = window{c.DialStart, c.Established}
			}
			if err := checkReplayStart(ctx, ag, want, got[0], w, grace); err != nil {
				t.Errorf("%s: %v", desc, err)
			}
		}
		if err := checkRun(want, got, start); err != nil {
			t.Errorf("%s: %v", desc, err)
		}
		if isLast && lastOf(got) != lastOf(want) {
			t.Errorf("%s: last binding ends at seq %d, thread's last event is %d", desc, lastOf(got), lastOf(want))
		}
	}
	// Frames that named a thread were published to it after the rebind;
	// switch_thread frames were not published at all.
	published := map[string]uint64{}
	for _, req := range reqs {
		if req.how == "user_message" || req.how == "top-level thread_id" {
			published[req.thread]++
		}
	}
	for _, tid := range threads {
		ag.expectCount(t, "thread."+tid+".in", published[tid], "the frames that switched to it, and no switch_thread")
	}
	t.Logf("%d bindings, %d events delivered, %d replays cut short by the next switch", len(segs), delivered, truncated)
}
