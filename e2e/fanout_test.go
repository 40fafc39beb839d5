package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// Scenario d: 100 connections with different timing on 10 threads: random
// connect, bind and publish delays, every bind method. Every event reaches
// every connection bound to its thread, counted exactly.
func TestManyConnections(t *testing.T) {
	const (
		nConns    = 100
		nThreads  = 10
		perThread = 20
	)
	r := newRand(t)
	sc := startSidecar(t, sidecarConfig{})
	ag := newAgent(t, sc.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	thread := func(i int) string { return fmt.Sprintf("thread_d%d", i%nThreads) }

	start := time.Now()
	var wg sync.WaitGroup
	for i := range nThreads {
		pr := childRand(r)
		tid := thread(i)
		wg.Go(func() {
			if sleepCtx(ctx, time.Duration(pr.IntN(500))*time.Millisecond) != nil {
				return
			}
			for range perThread {
				if _, err := ag.publish(ctx, tid, ag.event(tid, "agent_thinking", 0)); err != nil {
					t.Error(err)
					return
				}
				if sleepCtx(ctx, time.Duration(pr.IntN(40))*time.Millisecond) != nil {
					return
				}
			}
		})
	}

	clients := make([]*client, nConns)
	published := make([]bool, nConns) // whether the binding frame goes to thread.<tid>.in
	for i := range nConns {
		cr := childRand(r)
		tid := thread(i)
		wg.Go(func() {
			c, pub, err := connectD(ctx, t, sc, cr, fmt.Sprintf("conn%03d", i), tid)
			if err != nil {
				t.Error(err)
				return
			}
			clients[i], published[i] = c, pub
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	setup := time.Since(start)

	var total int
	for i, c := range clients {
		want := ag.expected(thread(i))
		if len(want) != perThread {
			t.Fatalf("agent acked %d events on %s, want %d", len(want), thread(i), perThread)
		}
		err := c.waitFor(30*time.Second, func(f []frame, _ error) bool { return len(events(f)) >= perThread })
		if err != nil {
			t.Errorf("%v", err)
		}
		if err := c.barrier(waitTimeout); err != nil {
			t.Error(err)
			continue
		}
		frames, rerr := c.snapshot()
		if rerr != nil {
			t.Errorf("%s: connection ended: %v", c.name, rerr)
		}
		segs, orphans, err := segments(frames)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		got := seqsOf(events(frames))
		total += len(got)
		if len(orphans) > 0 || len(segs) != 1 || segs[0].Bound.ThreadID != thread(i) || len(segs[0].Foreign) > 0 {
			t.Errorf("%s: %d events before thread_bound, %d thread_bound frames (want 1 for %s), %d foreign events", c.name, len(orphans), len(segs), thread(i), foreignCount(segs))
			continue
		}
		if !slices.Equal(got, want) {
			err := checkRun(want, got, 0)
			t.Errorf("%s on %s: received %d events, want exactly the %d published: %v\n got %v\nwant %v", c.name, thread(i), len(got), len(want), err, got, want)
		}
		if b := segs[0].Bound; b.Replayed > len(got) || !b.Recovered {
			t.Errorf("%s: thread_bound %+v, then %d events", c.name, b, len(got))
		}
	}
	inbound := map[string]uint64{}
	for i, pub := range published {
		if pub {
			inbound[thread(i)]++
		}
	}
	for i := range nThreads {
		ag.expectCount(t, "thread."+thread(i)+".in", inbound[thread(i)], "one per binding frame other than switch_thread")
	}
	t.Logf("%d connections on %d threads: %d events delivered (want %d), setup %v, all delivered after %v",
		nConns, nThreads, total, nConns*perThread, setup.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// connectD connects one client of scenario d after a random delay and binds
// it to tid after another, in a random one of the contract's ways. It
// reports whether the binding frame is published to thread.<tid>.in.
func connectD(ctx context.Context, t *testing.T, sc *sidecar, r *rand.Rand, name, tid string) (*client, bool, error) {
	if err := sleepCtx(ctx, time.Duration(r.IntN(800))*time.Millisecond); err != nil {
		return nil, false, err
	}
	how := r.IntN(4)
	if how == 0 {
		c, err := tryDial(t, sc, name, dialOptions{Query: "thread_id=" + tid})
		return c, false, err
	}
	c, err := tryDial(t, sc, name, dialOptions{})
	if err != nil {
		return nil, false, err
	}
	if err := sleepCtx(ctx, time.Duration(r.IntN(200))*time.Millisecond); err != nil {
		return nil, false, err
	}
	var msg string
	switch how {
	case 1:
		// The legacy first message: no thread yet, so it goes to
		// conn.<cid>.in; the user_message after it binds.
		if err := c.trySend(`{"type":"start_agent","payload":{"user_request":"go","thread_id":null,"context":{},"settings":{}}}`); err != nil {
			return nil, false, err
		}
		msg = `{"type":"user_message","payload":{"content":"hi","references":[],"thread_id":"` + tid + `"}}`
	case 2:
		msg = `{"type":"switch_thread","payload":{"thread_id":"` + tid + `"}}`
	case 3:
		msg = `{"type":"stop_agent","thread_id":"` + tid + `","payload":{}}`
	}
	if err := c.trySend(msg); err != nil {
		return nil, false, err
	}
	return c, how != 2, c.waitFor(waitTimeout, func(f []frame, _ error) bool { return countType(f, typeBound) >= 1 })
}

func foreignCount(segs []segment) int {
	n := 0
	for _, s := range segs {
		n += len(s.Foreign)
	}
	return n
}
