package bus

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// The recent window answers replays from memory. A reconnect storm replays
// the same recent part of the stream for thousands of threads at once; read
// from the store, every replay waits for a shared scan to pass its last
// event (scan.go). The window holds the recent events of every thread,
// warmed at start (and after a new stream incarnation) by one sequential
// read of the stream from the replay grace window on, then fed by one
// sidecar-wide subscription to the live subjects.
//
// It answers only for what it provably holds completely, and a replay it
// cannot answer reads the store as before:
//   - The warm-up read is a prefix of the stream from its start sequence:
//     every thread.*.out message in it is held.
//   - A live message extends a thread's events only when its
//     Nats-Last-Sequence is the thread's last held event (or lies before the
//     thread's coverage): a lost republish breaks the chain, and the thread's
//     coverage then starts after the lost event.
//   - A replay ends at the feed position (Join), which comes from the store
//     or the feed: the window answers only when it holds the event at that
//     position itself, so an event it never received (lost, or stored before
//     the subscription and after the warm-up read) sends the replay to the
//     store.
//   - Eviction (the memory bound), the stream's first sequence moving on
//     (retention, limits), interior deletes and a new epoch only ever shrink
//     what it claims.

// DefaultRecentBytes bounds the recent window's memory by default.
const DefaultRecentBytes = 64 << 20

// defaultRecentSpan is how far back the warm-up reads by default: the
// sidecar's default replay grace.
const defaultRecentSpan = 30 * time.Second

// recentEventOverhead is what one held event costs besides its frame: the
// Event, its slot in the eviction queue and slice growth.
const recentEventOverhead = 128

// recentPendMax bounds the live messages buffered while a warm-up reads; the
// ones beyond are dropped, as a lost republish would be.
const recentPendMax = 1 << 16

type recentState int

const (
	recentCold    recentState = iota // holds nothing; the next idle check warms it
	recentWarming                    // a warm-up reads the stream
	recentReady
	recentOff // disabled by the configuration
)

// recent is the window and the subscription feeding it.
type recent struct {
	b        *Bus
	maxBytes int
	span     time.Duration // how far back the warm-up reads
	sub      *nats.Subscription
	msgs     chan *nats.Msg

	mu      sync.Mutex
	state   recentState
	warmed  chan struct{} // closed when the warm-up under way ends
	pend    []*nats.Msg   // live messages that came while warming
	w       *window
	deleted uint64 // the stream's interior deletes at the last check

	hits, misses atomic.Uint64
}

// window is what the recent window holds. Every thread's events with a
// sequence in [from, its last held event] are held, except for threads
// whose own coverage starts later (after a broken chain).
type window struct {
	max      int
	bytes    int
	from     uint64    // every thread: complete from this sequence
	fromTime time.Time // events stored at or after it have a sequence >= from
	threads  map[string]*recentThread
	fifo     []fifoSlot // held events, oldest first (stale slots are skipped)
	head     int
}

type recentThread struct {
	from     uint64    // 0: the window's
	fromTime time.Time // zero: the window's
	evs      []Event   // ascending sequences, complete from the coverage start
}

type fifoSlot struct {
	tid string
	seq uint64
}

func newWindow(max int, from uint64, fromTime time.Time) *window {
	return &window{max: max, from: from, fromTime: fromTime, threads: make(map[string]*recentThread)}
}

func eventCost(ev Event) int { return len(ev.Frame) + recentEventOverhead }

// add appends ev to t's events and evicts what the bound requires.
func (w *window) add(tid string, t *recentThread, ev Event) {
	t.evs = append(t.evs, ev)
	w.fifo = append(w.fifo, fifoSlot{tid: tid, seq: ev.Seq})
	w.bytes += eventCost(ev)
	for w.bytes > w.max && w.evictOldest() {
	}
}

// thread returns tid's entry, creating it.
func (w *window) thread(tid string) *recentThread {
	t := w.threads[tid]
	if t == nil {
		t = &recentThread{}
		w.threads[tid] = t
	}
	return t
}

// coverage is where tid's held events start being complete.
func (w *window) coverage(t *recentThread) (uint64, time.Time) {
	from, at := w.from, w.fromTime
	if t != nil {
		from = max(from, t.from)
		if t.fromTime.After(at) {
			at = t.fromTime
		}
	}
	return from, at
}

// evictOldest drops the oldest held event; the window then claims
// completeness only after it.
func (w *window) evictOldest() bool {
	for w.head < len(w.fifo) {
		s := w.popHead()
		t := w.threads[s.tid]
		if t == nil || len(t.evs) == 0 || t.evs[0].Seq != s.seq {
			continue // dropped already (a broken chain)
		}
		ev := t.evs[0]
		t.evs[0] = Event{}
		t.evs = t.evs[1:]
		w.bytes -= eventCost(ev)
		w.from = max(w.from, ev.Seq+1)
		if at := ev.Time.Add(time.Nanosecond); at.After(w.fromTime) {
			w.fromTime = at
		}
		if len(t.evs) == 0 && t.from <= w.from {
			delete(w.threads, s.tid)
		}
		return true
	}
	return false
}

// drop forgets t's held events: its chain broke.
func (w *window) drop(t *recentThread) {
	for _, ev := range t.evs {
		w.bytes -= eventCost(ev)
	}
	t.evs = nil
}

// live applies a republished message of tid: stored at seq, the thread's
// previous event at prev.
func (w *window) live(tid string, ev Event, prev uint64) {
	t := w.threads[tid]
	if t != nil && len(t.evs) > 0 {
		last := t.evs[len(t.evs)-1].Seq
		switch {
		case ev.Seq <= last:
			return // held already
		case prev == last:
		case prev > last:
			// Lost on the live path: the events after last up to prev.
			w.drop(t)
			t.from, t.fromTime = prev+1, ev.Time.Add(time.Nanosecond)
		default:
			// The stream says the thread's previous event is older than
			// one held: not an event of this chain (deleted since, or not
			// from this stream). Trust nothing of it.
			w.drop(t)
			t.from, t.fromTime = ev.Seq+1, ev.Time.Add(time.Nanosecond)
			return
		}
		w.add(tid, t, ev)
		return
	}
	from, _ := w.coverage(t)
	if ev.Seq < from {
		return
	}
	t = w.thread(tid)
	if prev >= from {
		t.from, t.fromTime = prev+1, ev.Time.Add(time.Nanosecond)
	}
	w.add(tid, t, ev)
}

// popHead takes the oldest slot off the fifo: cleared, so that its thread
// id is not kept, and the slice compacted once most of it lies behind head.
func (w *window) popHead() fifoSlot {
	s := w.fifo[w.head]
	w.fifo[w.head] = fifoSlot{}
	w.head++
	if w.head > 1024 && w.head > len(w.fifo)/2 {
		w.fifo = append([]fifoSlot(nil), w.fifo[w.head:]...)
		w.head = 0
	}
	return s
}

// dropBefore forgets the events below first, which the stream no longer
// holds. The window's claims stay: nothing below first exists.
func (w *window) dropBefore(first uint64) {
	for w.head < len(w.fifo) && w.fifo[w.head].seq < first {
		s := w.popHead()
		t := w.threads[s.tid]
		if t == nil || len(t.evs) == 0 || t.evs[0].Seq != s.seq {
			continue
		}
		w.bytes -= eventCost(t.evs[0])
		t.evs[0] = Event{}
		t.evs = t.evs[1:]
		if len(t.evs) == 0 && t.from <= w.from {
			delete(w.threads, s.tid)
		}
	}
}

// serve returns tid's events from start through the sequence through, the
// event stored at throughTime, or false when the window does not provably
// hold all of them.
func (w *window) serve(tid string, start Start, through uint64, throughTime time.Time) ([]Event, bool) {
	t := w.threads[tid]
	from, fromTime := w.coverage(t)
	if start.Time.IsZero() {
		if start.AfterSeq+1 < from {
			return nil, false
		}
	} else if start.Time.Before(fromTime) {
		return nil, false
	}
	if through < from {
		return nil, true // the thread's events up to through are all before the range
	}
	if t == nil {
		return nil, false
	}
	evs := t.evs
	// The event at through must be held, and be the message the stream
	// holds there (same time: not one of another incarnation of the
	// stream that the periodic check has not noticed yet). The chain is
	// complete from the coverage start up to it.
	i := sort.Search(len(evs), func(i int) bool { return evs[i].Seq >= through })
	if i == len(evs) || evs[i].Seq != through || !evs[i].Time.Equal(throughTime) {
		return nil, false
	}
	evs = evs[:i+1]
	var lo int
	if start.Time.IsZero() {
		lo = sort.Search(len(evs), func(i int) bool { return evs[i].Seq > start.AfterSeq })
	} else {
		lo = sort.Search(len(evs), func(i int) bool { return !evs[i].Time.Before(start.Time) })
	}
	return append([]Event(nil), evs[lo:]...), true
}

func newRecent(b *Bus, maxBytes int, span time.Duration) *recent {
	r := &recent{b: b, maxBytes: maxBytes, span: span, state: recentCold}
	if maxBytes <= 0 {
		r.state = recentOff
	}
	return r
}

// start subscribes to every live subject; the first warm-up follows.
func (r *recent) start() error {
	if r.state == recentOff {
		return nil
	}
	r.msgs = make(chan *nats.Msg, shardQueue)
	sub, err := r.b.nc.ChanSubscribe(subjects.LiveAll, r.msgs)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", subjects.LiveAll, err)
	}
	r.sub = sub
	r.b.goBackground(r.loop)
	r.warmLater()
	return nil
}

// loop applies live messages until the bus closes.
func (r *recent) loop() {
	for {
		select {
		case <-r.b.bg.Done():
			return
		case msg := <-r.msgs:
			r.apply(msg)
		}
	}
}

func (r *recent) apply(msg *nats.Msg) {
	tid, err := subjects.ThreadOf(msg.Subject)
	if err != nil {
		return
	}
	seq, prev, ts, err := liveHeaders(msg)
	if err != nil {
		return // not from the stream: nothing it says is trusted
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case recentWarming:
		if len(r.pend) < recentPendMax {
			r.pend = append(r.pend, msg)
		}
	case recentReady:
		r.w.live(tid, Event{Thread: tid, Seq: seq, Time: ts, Frame: frame.Event(msg.Data, tid, seq)}, prev)
	}
}

// warmLater starts a warm-up unless one runs or the window is ready.
func (r *recent) warmLater() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != recentCold {
		return
	}
	r.state = recentWarming
	r.pend = nil
	r.warmed = make(chan struct{})
	done := r.warmed
	if !r.b.goBackground(func() { r.warm(done) }) {
		r.state = recentCold
		close(done)
	}
}

// warm reads the stream from the replay grace window on into a new window.
func (r *recent) warm(done chan struct{}) {
	defer close(done)
	began := time.Now()
	w, err := r.read()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.warmed != done || r.state != recentWarming {
		// Reset meanwhile, maybe with another warm-up under way since: what
		// this one read may predate the reset, and pend is the other's.
		return
	}
	pend := r.pend
	r.pend = nil
	if err != nil {
		r.state = recentCold // the next idle check tries again
		r.b.log.Warn("replay window warm-up failed", "err", err)
		return
	}
	r.w = w
	r.state = recentReady
	for _, msg := range pend {
		tid, _ := subjects.ThreadOf(msg.Subject)
		seq, prev, ts, _ := liveHeaders(msg)
		w.live(tid, Event{Thread: tid, Seq: seq, Time: ts, Frame: frame.Event(msg.Data, tid, seq)}, prev)
	}
	r.b.log.Info("replay window warmed", "from_seq", w.from, "events", len(w.fifo)-w.head, "bytes", w.bytes, "took", time.Since(began).Round(time.Millisecond))
}

// read is the warm-up's sequential read: from the first thread.*.out
// message stored in the grace window (as the stream leader says) to the
// end of the stream.
func (r *recent) read() (*window, error) {
	ctx, cancel := context.WithTimeout(r.b.bg, feedIOTimeout)
	info, err := r.b.stream.Info(ctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", subjects.Stream, err)
	}
	since := time.Now().Add(-r.span)
	ctx, cancel = context.WithTimeout(r.b.bg, feedIOTimeout)
	m, err := r.b.leaderNext(ctx, subjects.ThreadOutAll, 0, since)
	cancel()
	from := info.State.LastSeq + 1
	switch {
	case err == nil:
		from = m.Seq
	case !errors.Is(err, errNoMessage):
		return nil, err
	}
	w := newWindow(r.maxBytes, from, since)
	if from <= info.State.FirstSeq {
		// The whole stream: nothing older exists.
		w.from, w.fromTime = 1, time.Time{}
	}
	r.mu.Lock()
	r.deleted = uint64(info.State.NumDeleted)
	r.mu.Unlock()
	for next := from; ; {
		msgs, err := r.b.scan.readBatch(next, ^uint64(0)-1)
		if err != nil {
			return nil, err
		}
		if len(msgs) == 0 {
			return w, nil
		}
		for _, m := range msgs {
			tid, err := subjects.ThreadOf(m.subject)
			if err != nil || m.subject != "thread."+tid+".out" {
				continue
			}
			w.add(tid, w.thread(tid), Event{Thread: tid, Seq: m.seq, Time: m.time, Frame: frame.Event(m.data, tid, m.seq)})
		}
		next = msgs[len(msgs)-1].seq + 1
	}
}

// serve answers a replay from the window, waiting for a warm-up under way.
// through is the position of tid's feed, whose event was stored at
// throughTime.
func (r *recent) serve(ctx context.Context, tid string, start Start, through uint64, throughTime time.Time) ([]Event, bool) {
	r.mu.Lock()
	if r.state == recentOff {
		r.mu.Unlock()
		return nil, false
	}
	if r.state == recentWarming {
		wait := r.warmed
		r.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			r.misses.Add(1)
			return nil, false
		}
		r.mu.Lock()
	}
	var evs []Event
	ok := false
	if r.state == recentReady {
		evs, ok = r.w.serve(tid, start, through, throughTime)
	}
	r.mu.Unlock()
	if ok {
		r.hits.Add(1)
	} else {
		r.misses.Add(1)
	}
	return evs, ok
}

// streamChecked is told what the periodic stream check read: events below
// the stream's first sequence are gone (retention, limits), an interior
// delete (an operator's delete or purge) drops the whole window, and a new
// epoch does too. A cold window is warmed again.
func (r *recent) streamChecked(first, deleted uint64, newEpoch bool) {
	r.mu.Lock()
	if r.state == recentOff {
		r.mu.Unlock()
		return
	}
	reset := newEpoch || deleted > r.deleted
	r.deleted = deleted
	switch {
	case reset:
		r.state, r.w, r.pend = recentCold, nil, nil
		r.b.log.Info("replay window dropped", "new_epoch", newEpoch, "interior_deletes", deleted)
		r.mu.Unlock()
		return // warmed at the next check, once the stream has settled
	case r.state == recentReady:
		r.w.dropBefore(first)
	}
	r.mu.Unlock()
	r.warmLater()
}

// recentReplay answers a replay from the recent window when it can: the
// replay must end at the position of tid's feed, whose event's time the
// window's must match.
func (b *Bus) recentReplay(ctx context.Context, tid string, start Start, through uint64) ([]Event, bool) {
	at, ok := b.hub.timeAt(tid, through)
	if !ok {
		b.recent.countMiss()
		return nil, false
	}
	return b.recent.serve(ctx, tid, start, through, at)
}

func (r *recent) countMiss() {
	r.mu.Lock()
	off := r.state == recentOff
	r.mu.Unlock()
	if !off {
		r.misses.Add(1)
	}
}

// RecentHits counts replays answered from the recent window.
func (b *Bus) RecentHits() uint64 { return b.recent.hits.Load() }

// RecentMisses counts replays the recent window could not answer, which
// read the stream.
func (b *Bus) RecentMisses() uint64 { return b.recent.misses.Load() }
