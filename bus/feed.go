package bus

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// Listener receives the live events of one thread.
type Listener interface {
	// Deliver is called once for every event stored after the position Join
	// returned, in stream order, from the feed's dispatch goroutine with the
	// feed locked. It must not block.
	Deliver(Event)
	// Fail is called at most once, when the feed cannot go on without a gap;
	// the listener has then been removed from the feed.
	Fail(error)
}

const (
	shardQueue    = 8192            // live messages buffered per dispatcher
	feedIOTimeout = 5 * time.Second // position lookups and gap repairs
)

// hub owns the live feeds of a Bus: one core subscription per thread with a
// local listener, dispatched by a fixed set of goroutines (shards), so that
// the number of goroutines does not grow with threads or connections.
type hub struct {
	b       *Bus
	mu      sync.Mutex
	feeds   map[string]*feed
	shards  []chan *nats.Msg
	stopped bool          // guarded by mu: no new goroutine may start
	done    chan struct{} // closed by stop
	wg      sync.WaitGroup

	gapsRepaired atomic.Uint64
	resyncFails  atomic.Uint64 // reads of a resync that failed (and were retried)
}

// feed is the live path of one thread on this sidecar.
type feed struct {
	tid string
	sub *nats.Subscription

	// mu orders everything that reads or moves the position: dispatch,
	// joins, resyncs. It is never held across I/O: the dispatcher that
	// delivers f's live messages serves other threads too.
	mu        sync.Mutex
	ready     bool          // last is known
	closed    atomic.Bool   // stopped: unsubscribed, to be replaced by a new feed; set with mu held
	resyncing bool          // a resync reads the stream: live messages are left to it
	missed    bool          // a live message came while resyncing: read again
	need      uint64        // a live message said this sequence was stored: the resync must deliver it
	lastLive  atomic.Int64  // unix nanoseconds of the last live message, for the idle check
	looking   chan struct{} // closed when the position lookup under way ends
	early     uint64        // highest live sequence seen before the position was known
	handoff   bool          // the resync reads what came while the position was looked up: not a gap
	last      uint64        // sequence of the last event delivered (or the position at start)
	lastTime  time.Time     // when the event at last was stored; zero if unknown
	listeners []Listener    // a set; a slice costs a thread with one listener 16 bytes, a map ~200
}

func newHub(b *Bus, shards int) *hub {
	h := &hub{b: b, feeds: make(map[string]*feed), shards: make([]chan *nats.Msg, shards), done: make(chan struct{})}
	for i := range h.shards {
		ch := make(chan *nats.Msg, shardQueue)
		h.shards[i] = ch
		h.wg.Go(func() {
			for {
				select {
				case msg := <-ch:
					h.dispatch(msg)
				case <-h.done:
					return
				}
			}
		})
	}
	return h
}

// stop ends the dispatchers. The shard channels stay open: the NATS client
// may still hold a message for one of them.
func (h *hub) stop() {
	h.mu.Lock()
	h.stopped = true
	h.mu.Unlock()
	close(h.done)
	h.wg.Wait()
}

// Join adds l to the live feed of tid, starting the feed if l is its first
// local listener, and returns the feed's position: l receives every event
// with a sequence above it; every event up to it is stored and can be read
// with History.
func (b *Bus) Join(ctx context.Context, tid string, l Listener) (uint64, error) {
	if b.nc.IsClosed() || b.nc.IsDraining() {
		return 0, ErrClosed
	}
	for {
		f, err := b.hub.feed(tid)
		if err != nil {
			return 0, err
		}
		f.mu.Lock()
		if f.closed.Load() {
			f.mu.Unlock()
			continue
		}
		if f.ready {
			f.add(l)
			pos := f.last
			f.mu.Unlock()
			return pos, nil
		}
		if wait := f.looking; wait != nil {
			f.mu.Unlock()
			select {
			case <-wait: // the lookup under way ended: look again
				continue
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		if err := b.hub.position(ctx, f); err != nil {
			b.hub.release(f)
			return 0, err
		}
	}
}

// Leave removes l from the feed of tid; the feed stops with its last listener.
// After Leave returns, l receives nothing more from tid.
func (b *Bus) Leave(tid string, l Listener) {
	b.hub.mu.Lock()
	f := b.hub.feeds[tid]
	b.hub.mu.Unlock()
	if f == nil {
		return
	}
	f.mu.Lock()
	f.remove(l)
	f.mu.Unlock()
	b.hub.release(f)
}

// GapsRepaired counts the live gaps filled from the stream so far.
func (b *Bus) GapsRepaired() uint64 { return b.hub.gapsRepaired.Load() }

// feed returns the feed of tid, subscribing a new one if there is none.
func (h *hub) feed(tid string) (*feed, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.feeds[tid]; f != nil && !f.closed.Load() {
		return f, nil
	}
	live, err := subjects.Live(tid)
	if err != nil {
		return nil, err
	}
	f := &feed{tid: tid}
	if f.sub, err = h.b.nc.ChanSubscribe(live, h.shardOf(tid)); err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", live, err)
	}
	h.feeds[tid] = f
	return f, nil
}

// release stops f if it has no listener left.
func (h *hub) release(f *feed) {
	f.mu.Lock()
	if f.closed.Load() || len(f.listeners) > 0 {
		f.mu.Unlock()
		return
	}
	f.closeLocked()
	f.mu.Unlock()
	h.forget(f)
}

// forget removes a closed feed from the hub. No lock is held while taking
// another: h.mu is never held across I/O, so a slow feed stalls only itself.
func (h *hub) forget(f *feed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.feeds[f.tid] == f {
		delete(h.feeds, f.tid)
	}
}

func (f *feed) closeLocked() {
	f.closed.Store(true)
	_ = f.sub.Unsubscribe() // fails only on a closed connection, which has no subscription left
}

func (h *hub) shardOf(tid string) chan *nats.Msg {
	sum := fnv.New32a()
	sum.Write([]byte(tid))
	return h.shards[sum.Sum32()%uint32(len(h.shards))]
}

// position looks up the last stored event of f's thread, after f's
// subscription was sent to the server: every event stored later is
// republished to it. Called with f.mu held, which it releases during the
// lookup (the dispatcher f shares with other threads must not wait for it)
// and returns unlocked. Live messages that come meanwhile are not
// delivered: the feed resyncs once it has its position if one was newer.
func (h *hub) position(ctx context.Context, f *feed) error {
	done := make(chan struct{})
	f.looking = done
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, feedIOTimeout)
	defer cancel()
	out, _ := subjects.ThreadOut(f.tid) // valid: the feed subscribed to its live subject
	seq, at, err := h.b.last.lastSeq(ctx, out)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.looking = nil
	close(done)
	if err != nil {
		return fmt.Errorf("last event of %s: %w", out, err)
	}
	if f.closed.Load() {
		return nil // the next turn of Join sees it
	}
	f.last, f.lastTime = seq, at
	f.ready = true
	if f.early > seq {
		f.handoff = true
		h.startResyncLocked(f)
	}
	return nil
}

// dispatch handles one live message on its shard goroutine.
func (h *hub) dispatch(msg *nats.Msg) {
	tid, err := subjects.ThreadOf(msg.Subject)
	if err != nil {
		return
	}
	h.mu.Lock()
	f := h.feeds[tid]
	h.mu.Unlock()
	if f == nil || f.sub != msg.Sub {
		return // a message of a feed that has stopped since
	}
	seq, prev, ts, err := liveHeaders(msg)
	if err != nil {
		h.b.log.Warn("dropping live message", "thread", tid, "err", err)
		return
	}
	f.lastLive.Store(time.Now().UnixNano())
	f.mu.Lock()
	h.dispatchLocked(f, msg, seq, prev, ts)
	f.mu.Unlock()
	if f.closed.Load() {
		h.forget(f)
	}
}

func (h *hub) dispatchLocked(f *feed, msg *nats.Msg, seq, prev uint64, ts time.Time) {
	if f.closed.Load() {
		return
	}
	if !f.ready {
		f.early = max(f.early, seq) // a Join looks the position up
		return
	}
	if seq <= f.last {
		return // already delivered, or stored before the feed's position
	}
	if f.resyncing {
		f.missed = true // stored: the resync reads it
		return
	}
	if prev > f.last {
		// The live path lost the events after f.last up to prev. A resync
		// reads them, and this one, from the stream, off the dispatcher
		// that f shares with other threads.
		f.need = max(f.need, prev)
		h.startResyncLocked(f)
		return
	}
	f.deliverLocked(Event{Thread: f.tid, Seq: seq, Time: ts, Frame: frame.Event(msg.Data, f.tid, seq)})
}

// resyncDelay lets a burst of drops end before the stream is read.
const resyncDelay = 100 * time.Millisecond

// Resync retries: a resync that cannot read the stream tries again, with
// backoff, until it has delivered everything stored or the feed has been
// unable to for resyncGiveUp, when its listeners are told (Fail).
const (
	resyncRetryFirst = 100 * time.Millisecond
	resyncRetryMax   = 2 * time.Second
	resyncGiveUp     = 30 * time.Second
)

// slowConsumer is told that the NATS client dropped messages of sub. A lost
// message is normally revealed by the next one (its Nats-Last-Sequence), but
// the last messages of a burst have no next one: read the stream instead.
func (h *hub) slowConsumer(sub *nats.Subscription) {
	tid, err := subjects.ThreadOf(sub.Subject)
	if err != nil {
		return
	}
	h.mu.Lock()
	f := h.feeds[tid]
	h.mu.Unlock()
	if f != nil && f.sub == sub {
		time.AfterFunc(resyncDelay, func() { h.resync(f) })
	}
}

// resyncAll resyncs every feed, after a reconnect: messages published while
// the connection was down were not delivered to it.
func (h *hub) resyncAll() {
	for _, f := range h.snapshot() {
		h.resync(f)
	}
}

// snapshot returns the feeds of the hub.
func (h *hub) snapshot() []*feed {
	h.mu.Lock()
	defer h.mu.Unlock()
	feeds := make([]*feed, 0, len(h.feeds))
	for _, f := range h.feeds {
		feeds = append(feeds, f)
	}
	return feeds
}

// resync delivers the events of f's thread stored after the last one it
// delivered, on a goroutine of its own, unless one runs already.
func (h *hub) resync(f *feed) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h.startResyncLocked(f)
}

// startResyncLocked starts f's resync. Until it ends, live messages are
// left to it: it reads the stream until a read found everything stored
// and no live message came meanwhile. The stream is read without f.mu
// held, so that the dispatcher f shares with other threads never waits
// for it.
func (h *hub) startResyncLocked(f *feed) {
	if f.closed.Load() || !f.ready || f.resyncing {
		return
	}
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	f.resyncing = true
	go func() {
		defer h.wg.Done()
		h.resyncLoop(f)
	}()
}

func (h *hub) resyncLoop(f *feed) {
	delay := resyncRetryFirst
	began := time.Now()
	for {
		f.mu.Lock()
		if f.closed.Load() {
			f.mu.Unlock()
			return
		}
		from := f.last
		f.missed = false
		f.mu.Unlock()

		evs, err := h.readAfter(f.tid, from)

		f.mu.Lock()
		if f.closed.Load() {
			f.mu.Unlock()
			return
		}
		for _, ev := range evs {
			if ev.Seq > f.last {
				if f.need > f.last && ev.Seq > f.need {
					break // the event at f.need is gone (checked below)
				}
				f.deliverLocked(ev)
			}
		}
		if err == nil && f.need > f.last {
			// The stream no longer holds an event the live path lost
			// (retention removed it): the feed cannot go on without a gap.
			h.failLocked(f, fmt.Errorf("%w: thread %s, events after %d up to %d", ErrGapUnrepaired, f.tid, f.last, f.need))
			f.mu.Unlock()
			h.forget(f)
			return
		}
		if err == nil && !f.missed {
			f.resyncing = false
			through, handoff := f.last, f.handoff
			f.handoff = false
			f.mu.Unlock()
			if through > from && !handoff {
				h.gapsRepaired.Add(1)
				h.b.log.Info("live gap repaired", "thread", f.tid, "after_seq", from, "through_seq", through)
			}
			return
		}
		if err != nil && time.Since(began) > resyncGiveUp {
			h.failLocked(f, fmt.Errorf("%w: thread %s: resync failed for %v: %v", ErrUnavailable, f.tid, resyncGiveUp, err))
			f.mu.Unlock()
			h.forget(f)
			return
		}
		f.mu.Unlock()
		if err == nil {
			continue // live messages came during the read: read them
		}
		h.resyncFails.Add(1)
		h.b.log.Warn("live resync failed, retrying", "thread", f.tid, "after_seq", from, "retry_in", delay, "err", err)
		select {
		case <-h.done:
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, resyncRetryMax)
	}
}

// readAfter reads the events of tid stored after the sequence from,
// through what the stream leader holds.
func (h *hub) readAfter(tid string, from uint64) ([]Event, error) {
	ctx, cancel := context.WithTimeout(h.b.bg, feedIOTimeout)
	defer cancel()
	var evs []Event
	last := from
	err := h.b.History(ctx, tid, Start{AfterSeq: from}, func(ev Event, _ uint64) bool {
		evs = append(evs, ev)
		last = ev.Seq
		return true
	})
	if err == nil { // what a lagging replica lacked
		_, err = h.b.readTail(ctx, tid, Start{AfterSeq: last}, 0, func(ev Event) bool {
			evs = append(evs, ev)
			return true
		})
	}
	return evs, err
}

// add adds l to the listeners unless it is one already. Called with f.mu held.
func (f *feed) add(l Listener) {
	for _, x := range f.listeners {
		if x == l {
			return
		}
	}
	f.listeners = append(f.listeners, l)
}

// remove removes l from the listeners. Called with f.mu held.
func (f *feed) remove(l Listener) {
	for i, x := range f.listeners {
		if x == l {
			last := len(f.listeners) - 1
			f.listeners[i] = f.listeners[last]
			f.listeners[last] = nil
			f.listeners = f.listeners[:last]
			if n := len(f.listeners); n == 0 || (n < cap(f.listeners)/4 && cap(f.listeners) > 16) {
				// A thread that had many listeners gives their slots back.
				f.listeners = append([]Listener(nil), f.listeners...)
			}
			return
		}
	}
}

func (f *feed) deliverLocked(ev Event) {
	for _, l := range f.listeners {
		l.Deliver(ev)
	}
	f.last, f.lastTime = ev.Seq, ev.Time
}

// timeAt returns when the event at seq of tid was stored, if seq is the
// position of tid's feed now (the feed's last event): the recent window
// answers a replay ending there only if it holds that very message.
func (h *hub) timeAt(tid string, seq uint64) (time.Time, bool) {
	h.mu.Lock()
	f := h.feeds[tid]
	h.mu.Unlock()
	if f == nil {
		return time.Time{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ready || f.last != seq || f.lastTime.IsZero() {
		return time.Time{}, false
	}
	return f.lastTime, true
}

// failLocked tells every listener that f cannot go on and stops f. The
// next Join of the thread replaces it with a new feed.
func (h *hub) failLocked(f *feed, err error) {
	h.b.log.Error("live feed failed", "thread", f.tid, "err", err)
	ls := f.listeners
	f.listeners = nil
	for _, l := range ls {
		l.Fail(err)
	}
	f.closeLocked()
}

func liveHeaders(msg *nats.Msg) (seq, prev uint64, ts time.Time, err error) {
	seq, err = strconv.ParseUint(streamHeader(msg.Header, jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return 0, 0, ts, fmt.Errorf("%w: %s: %v", ErrBadLiveMessage, jetstream.SequenceHeader, err)
	}
	prev, err = strconv.ParseUint(streamHeader(msg.Header, jetstream.LastSequenceHeader), 10, 64)
	if err != nil {
		return 0, 0, ts, fmt.Errorf("%w: %s: %v", ErrBadLiveMessage, jetstream.LastSequenceHeader, err)
	}
	ts, _ = time.Parse(time.RFC3339Nano, streamHeader(msg.Header, jetstream.TimeStampHeaer))
	return seq, prev, ts, nil
}

// streamHeader returns the value the stream set for key. The server appends
// its headers (republish, direct get) after those of the published message,
// which may carry the same names: an agent forwarding a message it read from
// a stream, for one. The stream's value is therefore the last one.
func streamHeader(h nats.Header, key string) string {
	v := h.Values(key)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// IdleCheckInterval is how often the stream's incarnation is checked (see
// Bus.checkStream), and how often the last stored event of each feed that
// received no live message for that long is compared with the last one it
// delivered: an event stored but never republished (the republish is
// at-most-once, and a lost last event has no successor to reveal it) is
// then read from the stream. It bounds how long such an event waits.
const IdleCheckInterval = 2 * time.Second

// idleLoop runs the idle check every IdleCheckInterval until the bus closes.
func (h *hub) idleLoop() {
	tick := time.NewTicker(IdleCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-h.b.bg.Done():
			return
		case <-tick.C:
			h.b.checkStream(h.b.bg)
			h.checkIdle()
		}
	}
}

// checkIdle resyncs the idle feeds whose thread has an event stored after
// the last one they delivered. The lookups are batched (lastSeqReader.read).
func (h *hub) checkIdle() {
	quiet := time.Now().Add(-IdleCheckInterval).UnixNano()
	var feeds []*feed
	var subjs []string
	for _, f := range h.snapshot() {
		if f.closed.Load() || f.lastLive.Load() > quiet {
			continue
		}
		out, _ := subjects.ThreadOut(f.tid) // valid: the feed subscribed
		feeds = append(feeds, f)
		subjs = append(subjs, out)
	}
	if len(feeds) == 0 {
		return
	}
	seqs, err := h.b.last.read(subjs)
	if err != nil {
		h.b.log.Warn("idle feed check failed", "feeds", len(feeds), "err", err)
		return
	}
	for i, f := range feeds {
		f.mu.Lock()
		if f.ready && seqs[subjs[i]].seq > f.last {
			h.b.log.Info("idle feed is behind the stream, resyncing", "thread", f.tid, "last_seq", f.last, "stored_seq", seqs[subjs[i]].seq)
			h.startResyncLocked(f)
		}
		f.mu.Unlock()
	}
}

// failAll tells the listeners of every feed that it cannot go on, and
// stops the feeds: their connections resume elsewhere or later.
func (h *hub) failAll(err error) {
	for _, f := range h.snapshot() {
		f.mu.Lock()
		if !f.closed.Load() {
			h.failLocked(f, err)
		}
		f.mu.Unlock()
		h.forget(f)
	}
}
