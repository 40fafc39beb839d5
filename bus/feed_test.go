package bus_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

func TestJoinPosition(t *testing.T) {
	e := newEnv(t)
	var r recorder
	pos, err := e.bus.Join(testCtx(t), "empty", &r)
	if err != nil || pos != 0 {
		t.Fatalf("Join of a thread without events = %d, %v; want 0, nil", pos, err)
	}
	e.bus.Leave("empty", &r)

	var last uint64
	for range 3 {
		last = e.publishEvent(t, "t", []byte(`{}`))
	}
	// Later events of other threads and frames of t do not move t's position.
	e.publishEvent(t, "other", []byte(`{}`))
	if _, err := e.bus.PublishThreadIn(testCtx(t), "t", nil, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	pos, err = e.bus.Join(testCtx(t), "t", &r)
	if err != nil || pos != last {
		t.Fatalf("Join = %d, %v; want the thread's last event %d (stream last %d)", pos, err, last, e.lastSeq(t))
	}
	e.bus.Leave("t", &r)
}

// TestJoinDeliversAfterPosition: a listener gets exactly the events stored
// after its position, in order, each once, with the frame and time of the
// stored event.
func TestJoinDeliversAfterPosition(t *testing.T) {
	e := newEnv(t)
	for range 3 {
		e.publishEvent(t, "t", []byte(`{"type":"before"}`))
	}
	var r recorder
	pos, err := e.bus.Join(testCtx(t), "t", &r)
	if err != nil {
		t.Fatal(err)
	}
	defer e.bus.Leave("t", &r)

	var want []stored
	for i := range 20 {
		data := fmt.Appendf(nil, `{"type":"agent_thinking","payload":{"step_number":%d}}`, i)
		want = append(want, stored{seq: e.publishEvent(t, "t", data), data: data})
		e.publishEvent(t, "other", []byte(`{}`))
	}
	// Once the marker arrived, every earlier event has been dispatched: a
	// duplicate would show in the list now.
	marker := e.publishEvent(t, "t", []byte(`{"type":"marker"}`))
	want = append(want, stored{seq: marker, data: []byte(`{"type":"marker"}`)})
	r.waitSeq(t, "listener", marker)

	evs, _ := r.snapshot()
	if got, wantSeqs := eventSeqs(evs), storedSeqs(want); !slices.Equal(got, wantSeqs) {
		t.Fatalf("position %d: delivered\n %v\nwant\n %v", pos, got, wantSeqs)
	}
	for i, ev := range evs {
		if ev.Thread != "t" || !bytes.Equal(ev.Frame, frame.Event(want[i].data, "t", want[i].seq)) {
			t.Errorf("event %d: thread %q frame %s", ev.Seq, ev.Thread, ev.Frame)
		}
	}
	// Live events carry the stored time, as History does.
	hist := readHistory(t, e.bus, "t", bus.Start{AfterSeq: pos})
	for i, y := range hist {
		if !evs[i].Time.Equal(y.ev.Time) {
			t.Errorf("event %d: live time %v, stored %v", evs[i].Seq, evs[i].Time, y.ev.Time)
		}
	}
}

// TestFeedShared: listeners of one thread share one subscription; Leave
// stops delivery at once; the feed ends with its last listener and a later
// Join starts a new one.
func TestFeedShared(t *testing.T) {
	e := newEnv(t)
	nc := e.bus.Conn()
	if err := e.bus.Ready(testCtx(t)); err != nil { // sets up the request inbox
		t.Fatal(err)
	}
	// The recent window's warm-up reads the stream with a subscription of
	// its own while it runs: count once it is over.
	waitFor(t, "the warm-up", func() bool { return bus.RecentReady(e.bus) })
	base := nc.NumSubscriptions()

	var r1, r2 recorder
	pos1, err := e.bus.Join(testCtx(t), "t", &r1)
	if err != nil {
		t.Fatal(err)
	}
	if n := nc.NumSubscriptions(); n != base+1 {
		t.Errorf("one listener: %d subscriptions, want %d", n, base+1)
	}
	s1 := e.publishEvent(t, "t", []byte(`{"n":1}`))
	r1.waitSeq(t, "r1", s1)
	pos2, err := e.bus.Join(testCtx(t), "t", &r2)
	if err != nil {
		t.Fatal(err)
	}
	if pos1 != 0 || pos2 != s1 {
		t.Errorf("positions %d and %d, want 0 and %d", pos1, pos2, s1)
	}
	if n := nc.NumSubscriptions(); n != base+1 {
		t.Errorf("two listeners of one thread: %d subscriptions, want %d (one shared feed)", n, base+1)
	}
	var both []uint64
	for range 5 {
		both = append(both, e.publishEvent(t, "t", []byte(`{}`)))
	}
	r1.waitSeq(t, "r1", both[4])
	r2.waitSeq(t, "r2", both[4])
	if got, want := r1.seqs(), append([]uint64{s1}, both...); !slices.Equal(got, want) {
		t.Errorf("r1 got %v, want %v", got, want)
	}
	if got := r2.seqs(); !slices.Equal(got, both) {
		t.Errorf("r2 got %v, want %v", got, both)
	}

	// r1 leaves: r2 goes on, r1 gets nothing more. Both were served by the
	// same dispatch, so once r2 has an event, r1 would have it too.
	e.bus.Leave("t", &r1)
	if n := nc.NumSubscriptions(); n != base+1 {
		t.Errorf("after one Leave: %d subscriptions, want %d", n, base+1)
	}
	s2 := e.publishEvent(t, "t", []byte(`{}`))
	r2.waitSeq(t, "r2", s2)
	if got := r1.seqs(); got[len(got)-1] != both[4] {
		t.Errorf("r1 got %v after it left", got)
	}

	// The last listener leaves: the feed ends.
	e.bus.Leave("t", &r2)
	if n := nc.NumSubscriptions(); n != base {
		t.Errorf("after the last Leave: %d subscriptions, want %d", n, base)
	}
	e.bus.Leave("t", &r2) // a second Leave is harmless
	e.bus.Leave("never_joined", &r2)
	gone := e.publishEvent(t, "t", []byte(`{"while":"nobody listens"}`))

	// Join again: a new feed, positioned after the event published while
	// nobody listened.
	var r3 recorder
	pos3, err := e.bus.Join(testCtx(t), "t", &r3)
	if err != nil {
		t.Fatal(err)
	}
	defer e.bus.Leave("t", &r3)
	if pos3 != gone {
		t.Errorf("Join after the feed ended: position %d, want %d", pos3, gone)
	}
	if n := nc.NumSubscriptions(); n != base+1 {
		t.Errorf("after joining again: %d subscriptions, want %d", n, base+1)
	}
	s3 := e.publishEvent(t, "t", []byte(`{}`))
	r3.waitSeq(t, "r3", s3)
	if got := r3.seqs(); !slices.Equal(got, []uint64{s3}) {
		t.Errorf("r3 got %v, want [%d]", got, s3)
	}
	// r3's feed shares the dispatcher of the old one: anything still meant
	// for r1 or r2 would have been dispatched before s3.
	if got := r2.seqs(); got[len(got)-1] != s2 {
		t.Errorf("r2 got %v after it left", got)
	}
	if got := r1.seqs(); got[len(got)-1] != both[4] {
		t.Errorf("r1 got %v after it left", got)
	}
}

// TestFeedThreadsIsolated: a listener of one thread never sees another's events.
func TestFeedThreadsIsolated(t *testing.T) {
	e := newEnv(t)
	var ra, rb recorder
	for tid, r := range map[string]*recorder{"a": &ra, "b": &rb} {
		if _, err := e.bus.Join(testCtx(t), tid, r); err != nil {
			t.Fatal(err)
		}
		defer e.bus.Leave(tid, r)
	}
	var wa, wb []uint64
	for range 10 {
		wa = append(wa, e.publishEvent(t, "a", []byte(`{}`)))
		wb = append(wb, e.publishEvent(t, "b", []byte(`{}`)))
	}
	ra.waitSeq(t, "a", wa[9])
	rb.waitSeq(t, "b", wb[9])
	if got := ra.seqs(); !slices.Equal(got, wa) {
		t.Errorf("a got %v, want %v", got, wa)
	}
	if got := rb.seqs(); !slices.Equal(got, wb) {
		t.Errorf("b got %v, want %v", got, wb)
	}
}

func TestJoinInvalidThread(t *testing.T) {
	e := newEnv(t)
	var r recorder
	for _, tid := range invalidThreadIDs {
		if _, err := e.bus.Join(testCtx(t), tid, &r); !errors.Is(err, subjects.ErrInvalidThreadID) {
			t.Errorf("Join(%q) = %v, want ErrInvalidThreadID", tid, err)
		}
		e.bus.Leave(tid, &r) // harmless
		err := e.bus.History(testCtx(t), tid, bus.Start{}, func(bus.Event, uint64) bool { return true })
		if !errors.Is(err, subjects.ErrInvalidThreadID) {
			t.Errorf("History(%q) = %v, want ErrInvalidThreadID", tid, err)
		}
	}
}

// TestJoinRace: listeners join while an agent publishes to their thread.
// For each, the history up to its position joined with what it was
// delivered must be exactly what the agent published from its position on:
// no gap and no duplicate at the handoff.
func TestJoinRace(t *testing.T) {
	e := newEnv(t)
	const (
		events    = 2000
		listeners = 20
		tid       = "race"
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	// Listener i joins once the agent has had joinAt[i] events acknowledged;
	// a few join before anything is published.
	outSubj, _ := subjects.ThreadOut(tid)
	noiseSubj, _ := subjects.ThreadOut("noise")
	joinAt := make([]int, listeners)
	start := make([]chan struct{}, listeners)
	for i := range joinAt {
		joinAt[i] = rng.IntN(events)
		if i < 2 {
			joinAt[i] = 0
		}
		start[i] = make(chan struct{})
	}

	var (
		wg        sync.WaitGroup
		acked     []uint64 // written by the publisher only; read after wg.Wait
		recs      = make([]*recorder, listeners)
		positions = make([]uint64, listeners)
		joinErrs  = make([]error, listeners)
	)
	for i := range listeners {
		recs[i] = new(recorder)
		wg.Go(func() {
			<-start[i]
			positions[i], joinErrs[i] = e.bus.Join(testCtx(t), tid, recs[i])
		})
	}
	release := func(n int) {
		for i, at := range joinAt {
			if at == n {
				close(start[i])
			}
		}
	}
	wg.Go(func() {
		release(0)
		for n := 1; n <= events; n++ {
			ack, err := e.js.Publish(testCtx(t), outSubj, fmt.Appendf(nil, `{"n":%d}`, n))
			if err != nil {
				t.Errorf("publish %d: %v", n, err)
				for i, at := range joinAt {
					if at >= n {
						close(start[i])
					}
				}
				return
			}
			acked = append(acked, ack.Sequence)
			if n%7 == 0 {
				// Another thread's traffic on the same stream.
				if _, err := e.js.Publish(testCtx(t), noiseSubj, nil); err != nil {
					t.Errorf("publish noise: %v", err)
				}
			}
			release(n)
		}
	})
	wg.Wait()
	if t.Failed() {
		return
	}
	last := acked[len(acked)-1]
	for i, r := range recs {
		if joinErrs[i] != nil {
			t.Fatalf("listener %d: Join: %v", i, joinErrs[i])
		}
		defer e.bus.Leave(tid, r)
		if positions[i] < last {
			r.waitSeq(t, fmt.Sprintf("listener %d", i), last)
		}
	}
	for i, r := range recs {
		pos := positions[i]
		live := r.seqs()
		var merged []uint64
		err := e.bus.History(testCtx(t), tid, bus.Start{AfterSeq: pos}, func(ev bus.Event, _ uint64) bool {
			if len(live) > 0 && ev.Seq >= live[0] {
				return false
			}
			merged = append(merged, ev.Seq)
			return true
		})
		if err != nil {
			t.Fatalf("listener %d: History after %d: %v", i, pos, err)
		}
		merged = append(merged, live...)
		if want := seqsAfter(acked, pos); !slices.Equal(merged, want) {
			t.Errorf("listener %d (joined after %d events, position %d): history+live has %d events, want %d\nfirst difference: %s",
				i, joinAt[i], pos, len(merged), len(want), firstDiff(merged, want))
		}
	}
	// Nothing is lost on the live path of one local server with queues this
	// short, so the handoff alone must be exact: a repair here would mean
	// Join let an event slip between its position and its subscription.
	if n := e.bus.GapsRepaired(); n != 0 {
		t.Errorf("%d gaps repaired during the joins, want 0", n)
	}
}

// TestJoinLeaveChurn: a few listeners join and leave one thread again and
// again while an agent publishes, so its feed often ends and starts anew
// mid-stream. Every session must see history+live as a gapless, duplicate-free
// run of what was published after its position, and no gap may need repair:
// repair would hide an event slipping between a new feed's position and
// its subscription.
func TestJoinLeaveChurn(t *testing.T) {
	e := newEnv(t)
	const (
		events  = 1000
		churner = 3
		tid     = "churn"
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	outSubj, _ := subjects.ThreadOut(tid)

	type session struct {
		pos uint64
		rec *recorder
	}
	var (
		wg        sync.WaitGroup
		acked     []uint64 // written by the publisher only; read after wg.Wait
		published atomic.Int64
		sessions  = make([][]session, churner)
	)
	wg.Go(func() {
		for n := 1; n <= events; n++ {
			ack, err := e.js.Publish(testCtx(t), outSubj, fmt.Appendf(nil, `{"n":%d}`, n))
			if err != nil {
				t.Errorf("publish %d: %v", n, err)
				published.Store(events)
				return
			}
			acked = append(acked, ack.Sequence)
			published.Store(int64(n))
		}
	})
	for c := range churner {
		rng := rand.New(rand.NewPCG(seed, uint64(c)))
		wg.Go(func() {
			for published.Load() < events {
				r := new(recorder)
				pos, err := e.bus.Join(testCtx(t), tid, r)
				if err != nil {
					t.Errorf("churner %d: Join: %v", c, err)
					return
				}
				sessions[c] = append(sessions[c], session{pos, r})
				// Stay until a few more events were acknowledged.
				until := min(published.Load()+int64(rng.IntN(25)), events)
				for published.Load() < until {
					time.Sleep(50 * time.Microsecond)
				}
				e.bus.Leave(tid, r)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	n := 0
	for c := range sessions {
		for i, s := range sessions[c] {
			n++
			live := s.rec.seqs()
			var merged []uint64
			err := e.bus.History(testCtx(t), tid, bus.Start{AfterSeq: s.pos}, func(ev bus.Event, _ uint64) bool {
				if len(live) == 0 || ev.Seq >= live[0] {
					return false
				}
				merged = append(merged, ev.Seq)
				return true
			})
			if err != nil {
				t.Fatal(err)
			}
			merged = append(merged, live...)
			want := seqsAfter(acked, s.pos)
			if len(merged) > len(want) || !slices.Equal(merged, want[:len(merged)]) {
				t.Errorf("churner %d session %d (position %d): history+live is not a prefix of what was published after it: %s",
					c, i, s.pos, firstDiff(merged, want))
			}
			if _, failed := s.rec.snapshot(); len(failed) > 0 {
				t.Errorf("churner %d session %d failed: %v", c, i, failed)
			}
		}
	}
	t.Logf("%d sessions", n)
	if n := e.bus.GapsRepaired(); n != 0 {
		t.Errorf("%d gaps repaired, want 0", n)
	}
}

func firstDiff(got, want []uint64) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("index %d: got %d, want %d", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("one is a prefix of the other (got %d, want %d)", len(got), len(want))
}

func eventSeqs(evs []bus.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Seq
	}
	return out
}

func storedSeqs(s []stored) []uint64 {
	out := make([]uint64, len(s))
	for i, x := range s {
		out[i] = x.seq
	}
	return out
}
