package bus_test

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// storeAnswer is what the stream answers for a replay of tid from start
// through the sequence through: History's events up to through.
func storeAnswer(t *testing.T, b *bus.Bus, tid string, start bus.Start, through uint64) []bus.Event {
	t.Helper()
	var evs []bus.Event
	for _, y := range readHistory(t, b, tid, start) {
		if y.ev.Seq <= through {
			evs = append(evs, y.ev)
		}
	}
	return evs
}

// sameReplay checks that a replay gave exactly the stream's answer: the
// same events, frames and times, with a head count that matches. A replay
// read from the stream may go on past its end (Replay's contract): only
// what it gave up to the last wanted event is compared.
func sameReplay(t *testing.T, what string, r replayed, want []bus.Event) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: Replay: %v", what, r.err)
	}
	if r.heads != 1 || r.head != len(r.events) {
		t.Errorf("%s: head called %d times with %d; %d events followed", what, r.heads, r.head, len(r.events))
	}
	if len(want) > 0 && len(r.events) > len(want) && r.events[len(want)-1].Seq == want[len(want)-1].Seq {
		r.events = r.events[:len(want)]
	}
	if got, w := eventSeqs(r.events), eventSeqs(want); !slices.Equal(got, w) {
		t.Fatalf("%s: replayed\n %v\nthe stream holds\n %v", what, got, w)
	}
	for i, ev := range r.events {
		if !bytes.Equal(ev.Frame, want[i].Frame) || !ev.Time.Equal(want[i].Time) || ev.Thread != want[i].Thread {
			t.Errorf("%s: event %d: %s at %v, the stream has %s at %v", what, ev.Seq, ev.Frame, ev.Time, want[i].Frame, want[i].Time)
		}
	}
}

// waitHeld waits until the recent window of b holds seq of tid.
func waitHeld(t *testing.T, b *bus.Bus, tid string, seq uint64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("the recent window to hold %s %d", tid, seq), func() bool {
		return slices.Contains(bus.RecentHeld(b, tid), seq)
	})
}

// join joins a recorder to tid's feed on b until the test ends and
// returns the feed position: replays end there.
func join(t *testing.T, b *bus.Bus, tid string) (uint64, *recorder) {
	t.Helper()
	r := &recorder{}
	pos, err := b.Join(testCtx(t), tid, r)
	if err != nil {
		t.Fatalf("Join %s: %v", tid, err)
	}
	t.Cleanup(func() { b.Leave(tid, r) })
	return pos, r
}

// hitsDuring returns how many replays fn made the recent window answer and miss.
func hitsDuring(b *bus.Bus, fn func()) (hits, misses uint64) {
	h0, m0 := bus.RecentStats(b)
	fn()
	h1, m1 := bus.RecentStats(b)
	return h1 - h0, m1 - m0
}

// TestRecentReplays: replays of every start, by sequence and by time, are
// answered from memory with exactly the stream's events, both from what the
// live path fed and from what a new Bus's warm-up read (a restart: binds
// right after Open wait for the warm-up, then are served from memory).
func TestRecentReplays(t *testing.T) {
	e := newEnv(t)
	evs := publishInterleaved(t, e, "r", "other", 30)
	last := evs[len(evs)-1].seq
	waitHeld(t, e.bus, "r", last)

	check := func(b *bus.Bus, what string) {
		t.Helper()
		if pos, _ := join(t, b, "r"); pos != last {
			t.Fatalf("%s: feed position %d, want %d", what, pos, last)
		}
		all := storeAnswer(t, b, "r", bus.Start{}, last)
		hits, misses := hitsDuring(b, func() {
			for after := uint64(0); after < last; after++ {
				start := bus.Start{AfterSeq: after}
				sameReplay(t, fmt.Sprintf("%s: after %d", what, after),
					replay(testCtx(t), b, "r", start, last), storeAnswer(t, b, "r", start, last))
			}
			for _, ev := range all {
				for _, at := range []time.Time{ev.Time, ev.Time.Add(time.Nanosecond), ev.Time.Add(-time.Nanosecond)} {
					start := bus.Start{Time: at}
					sameReplay(t, fmt.Sprintf("%s: from %v", what, at), replay(testCtx(t), b, "r", start, last), storeAnswer(t, b, "r", start, last))
				}
			}
		})
		if misses != 0 || hits == 0 {
			t.Errorf("%s: %d replays answered from memory, %d missed; want all answered", what, hits, misses)
		}
	}
	check(e.bus, "fed live")

	// A restart: a new Bus binds at once; its replays wait for the warm-up.
	b2 := openBus(t, e.ns.ClientURL())
	pos, _ := join(t, b2, "r")
	if pos != last {
		t.Fatalf("Join on the new Bus = %d; want %d", pos, last)
	}
	hits, _ := hitsDuring(b2, func() {
		sameReplay(t, "right after Open", replay(testCtx(t), b2, "r", bus.Start{}, pos), storeAnswer(t, b2, "r", bus.Start{}, pos))
	})
	if hits != 1 {
		t.Errorf("the first replay after Open was not answered from memory")
	}
	check(b2, "warmed")
}

// TestRecentWarmWindow: the warm-up reads only the span; replays that start
// before what it read go to the stream, with the same answer, whatever
// the start (an off-by-one at the window's start shows here).
func TestRecentWarmWindow(t *testing.T) {
	e := newEnv(t)
	old := publishInterleaved(t, e, "w", "other", 8)
	const span = 500 * time.Millisecond
	oldAt := time.Now()
	waitFor(t, "the first events to be older than the span", func() bool { return time.Since(oldAt) > span })
	recent := publishInterleaved(t, e, "w", "other", 8)
	last := recent[len(recent)-1].seq

	b2 := openBusWith(t, bus.Config{URL: e.ns.ClientURL(), RecentSpan: span})
	waitFor(t, "the warm-up", func() bool { return bus.RecentReady(b2) })
	join(t, b2, "w")
	hits, misses := hitsDuring(b2, func() {
		for after := uint64(0); after < last; after++ {
			start := bus.Start{AfterSeq: after}
			sameReplay(t, fmt.Sprintf("after %d", after), replay(testCtx(t), b2, "w", start, last), storeAnswer(t, b2, "w", start, last))
		}
		for _, at := range []time.Time{oldAt.Add(-span), oldAt, time.Now().Add(-span / 2)} {
			start := bus.Start{Time: at}
			sameReplay(t, fmt.Sprintf("from %v", at), replay(testCtx(t), b2, "w", start, last), storeAnswer(t, b2, "w", start, last))
		}
	})
	if hits == 0 || misses == 0 {
		t.Errorf("%d replays answered from memory, %d from the stream; want some of each", hits, misses)
	}
	if held := bus.RecentHeld(b2, "w"); len(held) == 0 || held[0] <= old[len(old)-1].seq {
		t.Errorf("the window holds %v, want only events after %d", held, old[len(old)-1].seq)
	}
}

// TestRecentEviction: past its memory bound the window drops its oldest
// events; replays that need them read the stream, with the same answer.
func TestRecentEviction(t *testing.T) {
	e := newEnv(t)
	b := openBusWith(t, bus.Config{URL: e.ns.ClientURL(), RecentBytes: 4 << 10})
	var seqs []uint64
	for i := range 60 {
		seqs = append(seqs, e.publishEvent(t, "ev", fmt.Appendf(nil, `{"type":"tool_completed","i":%d}`, i)))
		e.publishEvent(t, "other", []byte(`{}`))
	}
	last := seqs[len(seqs)-1]
	waitHeld(t, b, "ev", last)
	join(t, b, "ev")
	held := bus.RecentHeld(b, "ev")
	if len(held) >= len(seqs) || len(held) < 2 {
		t.Fatalf("the window holds %d of %d events under a 4 KiB bound", len(held), len(seqs))
	}
	hits, misses := hitsDuring(b, func() {
		for after := uint64(0); after < last; after++ {
			start := bus.Start{AfterSeq: after}
			sameReplay(t, fmt.Sprintf("after %d", after), replay(testCtx(t), b, "ev", start, last), storeAnswer(t, b, "ev", start, last))
		}
	})
	if hits == 0 || misses == 0 {
		t.Errorf("%d replays answered from memory, %d from the stream; want some of each", hits, misses)
	}
}

// TestRecentNeverServesAHole: a republish lost on the live path leaves the
// window without that event. Replays that need it, or that end at an event
// the window never received, read the stream; the window answers only what
// follows the hole (what it held before it is dropped).
func TestRecentNeverServesAHole(t *testing.T) {
	e := newEnv(t)
	waitFor(t, "the warm-up", func() bool { return bus.RecentReady(e.bus) })
	disableRepublish(t, e)
	rp := newRepublisher(t, e, "holey")
	var evs []liveEvent
	for i := range 8 {
		evs = append(evs, rp.store(fmt.Appendf(nil, `{"i":%d}`, i)))
		e.publishEvent(t, "other", []byte(`{}`))
	}
	for i, ev := range evs {
		if i != 3 && i != 7 { // 3: lost; 7, the last: not republished yet
			rp.send(ev)
		}
	}
	waitHeld(t, e.bus, "holey", evs[6].seq)
	last := evs[7].seq
	if pos, _ := join(t, e.bus, "holey"); pos != last {
		t.Fatalf("feed position %d, want %d", pos, last)
	}
	check := func(after uint64, fromMemory bool) {
		t.Helper()
		start := bus.Start{AfterSeq: after}
		hits, _ := hitsDuring(e.bus, func() {
			sameReplay(t, fmt.Sprintf("after %d", after), replay(testCtx(t), e.bus, "holey", start, last), storeAnswer(t, e.bus, "holey", start, last))
		})
		if (hits == 1) != fromMemory {
			t.Errorf("after %d through %d: answered from memory %v, want %v", after, last, hits == 1, fromMemory)
		}
	}
	for after := uint64(0); after < last; after++ {
		check(after, false) // ends at an event never received
	}
	rp.send(evs[7])
	waitHeld(t, e.bus, "holey", last)
	for after := uint64(0); after < last; after++ {
		check(after, after >= evs[3].seq) // before: needs the lost event
	}
}

// TestRecentForeignHeaders: an event whose publisher set the stream's own
// header names (forwarded from another stream) is held with the sequence
// and time this stream gave it; a live message without the republish
// headers is not held at all.
func TestRecentForeignHeaders(t *testing.T) {
	e := newEnv(t)
	waitFor(t, "the warm-up", func() bool { return bus.RecentReady(e.bus) })
	_, rec := join(t, e.bus, "f")
	first := e.publishEvent(t, "f", []byte(`{"n":0}`))
	out, _ := subjects.ThreadOut("f")
	fwd := nats.NewMsg(out)
	fwd.Data = []byte(`{"forwarded":true}`)
	fwd.Header.Set("Nats-Stream", "ELSEWHERE")
	fwd.Header.Set("Nats-Sequence", "999999")
	fwd.Header.Set("Nats-Last-Sequence", "0")
	fwd.Header.Set("Nats-Time-Stamp", "2001-01-01T00:00:00Z")
	ack, err := e.js.PublishMsg(testCtx(t), fwd)
	if err != nil {
		t.Fatal(err)
	}
	live, _ := subjects.Live("f")
	if err := e.agent.Publish(live, []byte(`{"forged":true}`)); err != nil {
		t.Fatal(err)
	}
	after := e.publishEvent(t, "f", []byte(`{"n":2}`))
	waitHeld(t, e.bus, "f", after)
	rec.waitSeq(t, "listener", after)
	if held := bus.RecentHeld(e.bus, "f"); !slices.Equal(held, []uint64{first, ack.Sequence, after}) {
		t.Fatalf("the window holds %v, want %v", held, []uint64{first, ack.Sequence, after})
	}
	hits, _ := hitsDuring(e.bus, func() {
		r := replay(testCtx(t), e.bus, "f", bus.Start{}, after)
		sameReplay(t, "replay", r, storeAnswer(t, e.bus, "f", bus.Start{}, after))
		if len(r.events) == 3 && !bytes.Equal(r.events[1].Frame, frame.Event(fwd.Data, "f", ack.Sequence)) {
			t.Errorf("forwarded event: frame %s", r.events[1].Frame)
		}
	})
	if hits != 1 {
		t.Errorf("the replay was not answered from memory")
	}
}

// TestRecentNewEpoch: when THREADS is re-created, the window drops what it
// held (sequences of the old incarnation) and warms again on the new one.
func TestRecentNewEpoch(t *testing.T) {
	e := newEnv(t)
	var old []uint64
	for range 5 {
		old = append(old, e.publishEvent(t, "ep", []byte(`{"epoch":"old"}`)))
	}
	waitHeld(t, e.bus, "ep", old[len(old)-1])
	epoch := e.bus.Epoch()
	// Re-created at once, and a bind before the periodic check noticed:
	// the window holds the old stream's event at the new one's position
	// (same sequence, another message), which it must not serve.
	if err := e.js.DeleteStream(testCtx(t), subjects.Stream); err != nil {
		t.Fatalf("delete stream: %v", err)
	}
	if _, err := e.js.CreateStream(testCtx(t), bus.StreamConfig(0, 1)); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	newSeq := e.publishEvent(t, "ep", []byte(`{"epoch":"new"}`))
	if !slices.Contains(old, newSeq) {
		t.Fatalf("new sequence %d is not one of the old epoch's %v", newSeq, old)
	}
	if pos, _ := join(t, e.bus, "ep"); pos != newSeq {
		t.Fatalf("feed position %d, want %d", pos, newSeq)
	}
	r := replay(testCtx(t), e.bus, "ep", bus.Start{}, newSeq)
	sameReplay(t, "new epoch", r, storeAnswer(t, e.bus, "ep", bus.Start{}, newSeq))
	for _, ev := range r.events {
		if bytes.Contains(ev.Frame, []byte("old")) {
			t.Errorf("replayed an event of the old epoch: %s", ev.Frame)
		}
	}
	waitFor(t, "the new epoch", func() bool { return e.bus.Epoch() != epoch })
	waitFor(t, "the window to warm on the new stream", func() bool {
		return bus.RecentReady(e.bus) && !slices.Contains(bus.RecentHeld(e.bus, "ep"), old[len(old)-1])
	})
	more := e.publishEvent(t, "ep", []byte(`{"epoch":"new"}`))
	waitHeld(t, e.bus, "ep", more)
	if pos, _ := join(t, e.bus, "ep"); pos != more {
		t.Fatalf("feed position %d, want %d", pos, more)
	}
	hits, _ := hitsDuring(e.bus, func() {
		sameReplay(t, "warm again", replay(testCtx(t), e.bus, "ep", bus.Start{}, more), storeAnswer(t, e.bus, "ep", bus.Start{}, more))
	})
	if hits != 1 {
		t.Errorf("after warming again, the replay was not answered from memory")
	}
}

// TestRecentHandoffWhilePublishing: binds replay from memory while an agent
// publishes to their threads. Each binding's replay up to its feed
// position followed by its live events must be exactly the thread's events,
// each once, in order.
func TestRecentHandoffWhilePublishing(t *testing.T) {
	e := newEnv(t)
	waitFor(t, "the warm-up", func() bool { return bus.RecentReady(e.bus) })
	const (
		threads = 4
		events  = 150
		binds   = 6 // per thread
	)
	var (
		mu    sync.Mutex
		acked = map[string][]uint64{}
		done  = make(chan struct{})
	)
	tids := make([]string, threads)
	for i := range tids {
		tids[i] = fmt.Sprintf("h%d", i)
	}
	var pub sync.WaitGroup
	pub.Go(func() {
		defer close(done)
		for i := range events {
			for _, tid := range tids {
				seq := e.publishEvent(t, tid, fmt.Appendf(nil, `{"i":%d}`, i))
				mu.Lock()
				acked[tid] = append(acked[tid], seq)
				mu.Unlock()
			}
		}
	})
	type session struct {
		tid      string
		rec      *recorder
		replayed []uint64
	}
	var (
		smu      sync.Mutex
		sessions []*session
		bindWG   sync.WaitGroup
	)
	for _, tid := range tids {
		bindWG.Go(func() {
			for j := range binds {
				waitFor(t, "progress", func() bool {
					mu.Lock()
					defer mu.Unlock()
					return len(acked[tid]) >= j*events/binds
				})
				s := &session{tid: tid, rec: &recorder{}}
				pos, err := e.bus.Join(testCtx(t), tid, s.rec)
				if err != nil {
					t.Errorf("Join: %v", err)
					return
				}
				r := replay(testCtx(t), e.bus, tid, bus.Start{}, pos)
				if r.err != nil {
					t.Errorf("Replay: %v", r.err)
					return
				}
				s.replayed = eventSeqs(r.events)
				smu.Lock()
				sessions = append(sessions, s)
				smu.Unlock()
			}
		})
	}
	bindWG.Wait()
	pub.Wait()
	<-done
	for _, s := range sessions {
		defer e.bus.Leave(s.tid, s.rec)
		want := acked[s.tid]
		s.rec.waitSeq(t, s.tid, want[len(want)-1])
		// As a binding does: a replay read from the stream may go past the
		// feed position; live events it already gave are skipped.
		got := slices.Clone(s.replayed)
		for _, seq := range s.rec.seqs() {
			if len(got) == 0 || seq > got[len(got)-1] {
				got = append(got, seq)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: replayed %d + live %d events, want the %d stored\nfirst difference: %s",
				s.tid, len(s.replayed), len(got)-len(s.replayed), len(want), firstDiff(got, want))
		}
	}
	if hits, _ := bus.RecentStats(e.bus); hits == 0 {
		t.Error("no replay was answered from memory")
	}
}
