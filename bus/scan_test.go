package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// replayed is what one Replay call produced.
type replayed struct {
	head   int
	heads  int // calls of head
	events []bus.Event
	err    error
}

func replay(ctx context.Context, b *bus.Bus, tid string, start bus.Start, through uint64) replayed {
	var r replayed
	r.err = b.Replay(ctx, tid, start, through, func(n int) {
		if len(r.events) > 0 {
			panic("head after an event")
		}
		r.head, r.heads = n, r.heads+1
	}, func(ev bus.Event) bool {
		r.events = append(r.events, ev)
		return true
	})
	return r
}

// checkReplay compares a replay with the events expected of it: head said
// how many came, in order, with the frames frame.Event builds.
func checkReplay(t *testing.T, what, tid string, r replayed, want []stored) {
	t.Helper()
	if r.err != nil {
		t.Errorf("%s: Replay: %v", what, r.err)
		return
	}
	if r.heads != 1 || r.head != len(r.events) {
		t.Errorf("%s: head called %d times with %d; %d events followed", what, r.heads, r.head, len(r.events))
	}
	got := make([]uint64, len(r.events))
	for i, ev := range r.events {
		got[i] = ev.Seq
	}
	wantSeqs := make([]uint64, len(want))
	for i, s := range want {
		wantSeqs[i] = s.seq
	}
	if !slices.Equal(got, wantSeqs) {
		t.Errorf("%s: sequences\n got %v\nwant %v", what, got, wantSeqs)
		return
	}
	for i, ev := range r.events {
		if ev.Thread != tid || ev.Time.IsZero() {
			t.Errorf("%s: event %d: thread %q, time %v", what, ev.Seq, ev.Thread, ev.Time)
		}
		if wantFrame := frame.Event(want[i].data, tid, want[i].seq); !bytes.Equal(ev.Frame, wantFrame) {
			t.Errorf("%s: event %d: Frame %s, want %s", what, ev.Seq, ev.Frame, wantFrame)
		}
	}
}

// between returns the events with a sequence in (after, through].
func between(events []stored, after, through uint64) []stored {
	var out []stored
	for _, s := range events {
		if s.seq > after && s.seq <= through {
			out = append(out, s)
		}
	}
	return out
}

// TestReplayScan has every replay read by the scanner and checks each
// against what was published: many threads interleaved with one another and
// with client frames, replays started at once from different places so that
// some join a pass under way and others wait for the next one.
func TestReplayScan(t *testing.T) {
	e := newEnv(t)
	bus.SetDirectReplays(e.bus, 0)
	const threads, perThread = 100, 60
	events := make(map[string][]stored)
	tids := make([]string, threads)
	for i := range tids {
		tids[i] = fmt.Sprintf("scan_%d", i)
	}
	// Several scan reads' worth of messages, so that a pass takes a while.
	type sent struct {
		tid  string
		data []byte
		ack  jetstream.PubAckFuture
	}
	var pubs []sent
	js, err := jetstream.New(e.agent, jetstream.WithPublishAsyncMaxPending(2*threads*perThread))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	for k := range perThread {
		for i, tid := range tids {
			data := fmt.Appendf(nil, `{"type":"agent_thinking","k":%d,"i":%d,"pad":"%s"}`, k, i, bytes.Repeat([]byte("x"), 200))
			if (k+i)%11 == 0 {
				data = fmt.Appendf(nil, "not json %d", k) // wrapped by frame.Event
			}
			out, _ := subjects.ThreadOut(tid)
			in, _ := subjects.ThreadIn(tid)
			f, err := js.PublishAsync(out, data)
			if err != nil {
				t.Fatalf("publish: %v", err)
			}
			pubs = append(pubs, sent{tid, data, f})
			if k%4 == 0 {
				if _, err := js.PublishAsync(in, []byte(`{"type":"user_message"}`)); err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(waitTimeout):
		t.Fatal("publishing timed out")
	}
	for _, p := range pubs {
		select {
		case ack := <-p.ack.Ok():
			events[p.tid] = append(events[p.tid], stored{seq: ack.Sequence, data: p.data})
		case err := <-p.ack.Err():
			t.Fatalf("publish: %v", err)
		}
	}
	last := e.lastSeq(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	type call struct {
		tid            string
		start          bus.Start
		after, through uint64
		got            replayed
	}
	var calls []*call
	for round := range 3 {
		for i, tid := range tids {
			ev := events[tid]
			c := &call{tid: tid, through: ev[len(ev)-1].seq}
			switch (i + round) % 4 {
			case 0: // everything
			case 1: // from after one of its events
				c.after = ev[rng.IntN(len(ev))].seq
				c.start.AfterSeq = c.after
			case 2: // through an earlier position
				c.through = ev[rng.IntN(len(ev))].seq
			case 3: // after a sequence of another thread or a client frame
				c.after = 1 + rng.Uint64N(last)
				c.start.AfterSeq = c.after
			}
			calls = append(calls, c)
		}
	}
	// The first two rounds at once; the third once the first pass has read
	// something, so that its replays find a pass under way: those ahead of
	// its cursor join it, the others wait for the next pass.
	var wg sync.WaitGroup
	for i, c := range calls {
		if i == 2*threads {
			waitFor(t, "a scan pass under way", func() bool { _, n := bus.ScanStats(e.bus); return n > 0 })
		}
		wg.Go(func() { c.got = replay(testCtx(t), e.bus, c.tid, c.start, c.through) })
	}
	wg.Wait()
	for _, c := range calls {
		checkReplay(t, fmt.Sprintf("%s (%v, through %d)", c.tid, c.start, c.through), c.tid, c.got, between(events[c.tid], c.after, c.through))
	}
	passes, scanned := bus.ScanStats(e.bus)
	t.Logf("%d replays: %d scan passes read %d messages (stream of %d)", len(calls), passes, scanned, last)
	if passes < 2 || passes >= uint64(len(calls)) {
		t.Errorf("%d scan passes for %d replays in two waves: want at least two, and fewer than replays", passes, len(calls))
	}
}

// TestReplayScanTime starts scanned replays at a time, as the grace rule does.
func TestReplayScanTime(t *testing.T) {
	e := newEnv(t)
	bus.SetDirectReplays(e.bus, 0)
	events := publishInterleaved(t, e, "timed", "other", 30)
	all := readHistory(t, e.bus, "timed", bus.Start{})
	through := events[len(events)-1].seq
	for _, k := range []int{0, 1, 17, 29} {
		at := all[k].ev.Time
		want := storedSince(all, events, at)
		r := replay(testCtx(t), e.bus, "timed", bus.Start{Time: at}, through)
		checkReplay(t, fmt.Sprintf("at time of event %d", k), "timed", r, want)
	}
	r := replay(testCtx(t), e.bus, "timed", bus.Start{Time: time.Now().Add(time.Hour)}, through)
	checkReplay(t, "after the last event", "timed", r, nil)
	r = replay(testCtx(t), e.bus, "timed", bus.Start{Time: time.Unix(1, 0)}, through)
	checkReplay(t, "from 1970", "timed", r, events)
}

// TestReplayNothingToRead: a thread with nothing stored through the position
// replays nothing, without reading, whichever way replays go.
func TestReplayNothingToRead(t *testing.T) {
	e := newEnv(t)
	events := publishInterleaved(t, e, "some", "other", 5)
	for _, direct := range []int{4, 0} {
		bus.SetDirectReplays(e.bus, direct)
		checkReplay(t, "position 0", "some", replay(testCtx(t), e.bus, "some", bus.Start{}, 0), nil)
		checkReplay(t, "after the position", "some", replay(testCtx(t), e.bus, "some", bus.Start{AfterSeq: events[4].seq}, events[4].seq), nil)
		checkReplay(t, "empty thread", "none", replay(testCtx(t), e.bus, "none", bus.Start{}, e.lastSeq(t)), nil)
	}
	if passes, _ := bus.ScanStats(e.bus); passes != 1 {
		t.Errorf("%d scan passes, want 1 (for the empty thread)", passes)
	}
	if r := replay(testCtx(t), e.bus, "bad.id", bus.Start{}, 10); !errors.Is(r.err, subjects.ErrInvalidThreadID) {
		t.Errorf("Replay of an invalid thread id: %v, want ErrInvalidThreadID", r.err)
	}
}

// TestReplayScanOverflow: a thread with more events than a scan holds for one
// replay reads them on its own instead, and still gets them all.
func TestReplayScanOverflow(t *testing.T) {
	e := newEnv(t)
	bus.SetDirectReplays(e.bus, 0)
	n := bus.ScanMaxEvents + 50
	var events []stored
	for i := range n {
		data := fmt.Appendf(nil, `{"i":%d}`, i)
		events = append(events, stored{seq: e.publishEvent(t, "busy", data), data: data})
		if i%10 == 0 {
			e.publishEvent(t, "quiet", []byte(`{}`))
		}
	}
	r := replay(testCtx(t), e.bus, "busy", bus.Start{}, events[n-1].seq)
	checkReplay(t, "overflowing thread", "busy", r, events)
	r = replay(testCtx(t), e.bus, "busy", bus.Start{AfterSeq: events[100].seq}, events[n-1].seq)
	checkReplay(t, "the last ones", "busy", r, events[101:])
}

// TestReplayScanForgedHeaders: an agent's own Nats-Subject, Nats-Sequence and
// Nats-Time-Stamp headers (a message forwarded from another stream) must not
// move an event to another thread or place.
func TestReplayScanForgedHeaders(t *testing.T) {
	e := newEnv(t)
	bus.SetDirectReplays(e.bus, 0)
	victim, _ := subjects.ThreadOut("victim")
	var events []stored
	for i := range 5 {
		data := fmt.Appendf(nil, `{"i":%d}`, i)
		events = append(events, stored{seq: e.publishEvent(t, "victim", data), data: data})
	}
	msg := nats.NewMsg("thread.forger.out")
	msg.Header.Set(jetstream.SubjectHeader, victim)
	msg.Header.Set(jetstream.SequenceHeader, "2")
	msg.Header.Set(jetstream.TimeStampHeaer, time.Unix(1, 0).UTC().Format(time.RFC3339Nano))
	msg.Data = []byte(`{"forged":true}`)
	ack, err := e.js.PublishMsg(testCtx(t), msg)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	data := []byte(`{"i":5}`)
	events = append(events, stored{seq: e.publishEvent(t, "victim", data), data: data})

	checkReplay(t, "victim", "victim", replay(testCtx(t), e.bus, "victim", bus.Start{}, events[5].seq), events)
	checkReplay(t, "forger", "forger", replay(testCtx(t), e.bus, "forger", bus.Start{}, ack.Sequence),
		[]stored{{seq: ack.Sequence, data: msg.Data}})
}

// TestReplayScanCancel: a replay that stops waiting for the scanner returns
// its context's error; a Bus closed under waiting replays fails them.
func TestReplayScanCancel(t *testing.T) {
	e := newEnv(t)
	bus.SetDirectReplays(e.bus, 0)
	events := publishInterleaved(t, e, "c", "d", 20)
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	if r := replay(ctx, e.bus, "c", bus.Start{}, events[19].seq); !errors.Is(r.err, context.Canceled) || r.heads != 0 {
		t.Errorf("cancelled replay: err %v, head called %d times; want context.Canceled and no head", r.err, r.heads)
	}
	checkReplay(t, "after a cancelled one", "c", replay(testCtx(t), e.bus, "c", bus.Start{}, events[19].seq), events)

	b := openBus(t, e.ns.ClientURL())
	bus.SetDirectReplays(b, 0)
	var wg sync.WaitGroup
	errs := make([]error, 50)
	for i := range errs {
		wg.Go(func() { errs[i] = replay(testCtx(t), b, "c", bus.Start{}, events[19].seq).err })
	}
	if err := b.Close(testCtx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil && !errors.Is(err, bus.ErrClosed) {
			t.Errorf("replay %d during Close: %v, want nil or ErrClosed", i, err)
		}
	}
}
