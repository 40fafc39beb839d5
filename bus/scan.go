package bus

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// Replays read a thread's events with per-subject batch direct gets (History)
// while binds are few. nats-server's file store finds the next message of a
// subject by walking its block from the previous one, so a thread whose events
// are interleaved with those of many others costs as many lookups as there
// are messages in between, for each replay: a reconnect storm of N threads is
// then quadratic (the plain nats.go baseline needs 46.7 s for 10,000 threads
// of 10 events here). While binds pile up, replays go to the scanner instead:
// it reads the stream once, in order and unfiltered (the store's cheapest
// read), and hands each message to every waiting replay of its thread. A
// replay joins the pass under way: if its range starts behind the pass's
// cursor, the part behind is read by the next pass, which starts at the
// earliest part left. A storm's late binds then do not wait for a whole pass
// before their own starts.
const (
	// directReplays is how many per-subject replays may be in flight before
	// new replays go to the scanner.
	directReplays = 4
	// scanBatch is how many messages one scan read asks for. It must not
	// exceed the connection's SyncQueueLen (see Open), or the read's
	// subscription could drop messages.
	scanBatch      = 1024
	scanBatchBytes = 4 << 20
	// scanMaxSpan is the longest stream range, in messages, a replay may ask
	// the scanner to read; a longer one reads on its own.
	scanMaxSpan = 1 << 18
	// scanMaxEvents and scanMaxBytes bound what a scan collects for one
	// replay, which is held until its range has been read: a replay with more
	// reads on its own, paced by its client.
	scanMaxEvents = historyBatch
	scanMaxBytes  = 1 << 20
	// scanReadTries is how many times a scan read is tried before the
	// replays of its pass fail.
	scanReadTries = 3
)

// scanReq is one replay waiting for the scanner: the events of tid with a
// sequence in (after, through].
type scanReq struct {
	tid     string
	after   uint64
	through uint64
	// behind is set when the replay joined a pass whose cursor had passed
	// after+1: the pass reads [behind, through] for it, and the next pass
	// (after, behind).
	behind  uint64
	wrapped bool // its events came in two parts: sort them when done

	// Set by the scanner with its mu held; read by the replay after done.
	events   []Event
	bytes    int
	overflow bool // more than scanMaxEvents/scanMaxBytes: events dropped
	err      error
	done     chan struct{}
	finished bool
}

type scanner struct {
	b         *Bus
	directMax int // directReplays; tests change it

	mu      sync.Mutex
	direct  int  // per-subject replays in flight
	running bool // a goroutine runs passes
	stopped bool
	cursor  uint64 // next sequence the pass reads
	end     uint64 // highest through of the active replays
	active  map[string][]*scanReq
	nactive int
	byEnd   replaysByEnd // the pass's replays, by the end of their range
	waiting []*scanReq   // behind the cursor: next pass

	// The pass being read, for its log line.
	passFrom, passMsgs uint64
	passReqs           int
	passStart          time.Time

	passes  atomic.Uint64
	scanned atomic.Uint64 // messages read by passes
}

func newScanner(b *Bus) *scanner {
	return &scanner{b: b, directMax: directReplays, active: make(map[string][]*scanReq)}
}

// stop fails the replays waiting for a scan; the pass goroutine, if any,
// ends at its next read (Bus.stopBackground cancels b.bg and waits).
func (s *scanner) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.failLocked(ErrClosed)
}

// Replay reads the events of tid stored from start through the sequence
// through, the position Join returned for the replay's listener (later events
// reach the listener live). It calls head once, before any event, with the
// number of events it is about to deliver, then fn for each in stream order
// until fn returns false. head's count may include events stored after
// through when the read went past it; those are delivered to fn as well.
func (b *Bus) Replay(ctx context.Context, tid string, start Start, through uint64, head func(n int), fn func(Event) bool) error {
	if err := subjects.ValidateThreadID(tid); err != nil {
		return err
	}
	if through == 0 || (start.Time.IsZero() && start.AfterSeq >= through) {
		head(0) // nothing of tid was stored through `through`
		return nil
	}
	if evs, ok := b.recentReplay(ctx, tid, start, through); ok {
		head(len(evs))
		for _, ev := range evs {
			if !fn(ev) {
				break
			}
		}
		return nil
	}
	if b.scan.enterDirect() {
		defer b.scan.leaveDirect()
		return b.replayDirect(ctx, tid, start, through, head, fn)
	}
	after := start.AfterSeq
	if !start.Time.IsZero() {
		seq, err := b.seqAt(ctx, start.Time)
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			// Nothing stored since start.Time, unless the replica that
			// answered lags: replayDirect checks with the leader.
			return b.replayDirect(ctx, tid, start, through, head, fn)
		}
		if err != nil {
			return err
		}
		if after = seq - 1; after >= through {
			head(0)
			return nil
		}
	}
	if through-after > scanMaxSpan {
		return b.replayDirect(ctx, tid, Start{AfterSeq: after}, through, head, fn)
	}
	r, err := b.scan.read(ctx, tid, after, through)
	if err != nil {
		return fmt.Errorf("read history of %s: %w", tid, err)
	}
	if r.overflow {
		return b.replayDirect(ctx, tid, Start{AfterSeq: after}, through, head, fn)
	}
	if n := len(r.events); n == 0 || r.events[n-1].Seq < through {
		// The replica that answered the scan lagged (see leader.go).
		from := after
		if n > 0 {
			from = r.events[n-1].Seq
		}
		_, err := b.readTail(ctx, tid, Start{AfterSeq: from}, through, func(ev Event) bool {
			r.events = append(r.events, ev)
			return true
		})
		if err != nil {
			return fmt.Errorf("read history of %s: %w", tid, err)
		}
	}
	head(len(r.events))
	for _, ev := range r.events {
		if !fn(ev) {
			break
		}
	}
	return nil
}

// replayDirect is a replay through per-subject reads: its count is the
// number of matching events stored when its first batch was read. When the
// replica that answered lagged behind through, the events it lacked are
// read from the leader: counted if nothing was delivered yet, else
// delivered after the counted ones (the client cannot tell them from live
// events: they come in order, once).
func (b *Bus) replayDirect(ctx context.Context, tid string, start Start, through uint64, head func(n int), fn func(Event) bool) error {
	total, sent, last, stopped := 0, 0, uint64(0), false
	err := b.History(ctx, tid, start, func(ev Event, pending uint64) bool {
		if sent == 0 {
			total = 1 + int(pending)
			head(total)
		}
		sent++
		last = ev.Seq
		if !fn(ev) {
			stopped = true
			return false
		}
		return sent < total
	})
	if err != nil || stopped || last >= through {
		if err == nil && sent == 0 {
			head(0)
		}
		return err
	}
	if sent > 0 {
		_, err = b.readTail(ctx, tid, Start{AfterSeq: last}, through, fn)
		return err
	}
	var evs []Event
	if _, err := b.readTail(ctx, tid, start, through, func(ev Event) bool {
		evs = append(evs, ev)
		return true
	}); err != nil {
		return fmt.Errorf("read history of %s: %w", tid, err)
	}
	head(len(evs))
	for _, ev := range evs {
		if !fn(ev) {
			break
		}
	}
	return nil
}

// seqAt returns the sequence of the first message stored at or after t.
func (b *Bus) seqAt(ctx context.Context, t time.Time) (uint64, error) {
	msgs, err := jetstreamext.GetBatch(ctx, b.js, subjects.Stream, 1, jetstreamext.GetBatchStartTime(t))
	if err != nil {
		return 0, fmt.Errorf("find the stream's position at %s: %w", t.UTC().Format(time.RFC3339Nano), err)
	}
	for m, err := range msgs {
		if err != nil {
			if !errors.Is(err, jetstreamext.ErrNoMessages) {
				err = fmt.Errorf("find the stream's position at %s: %w", t.UTC().Format(time.RFC3339Nano), err)
			}
			return 0, err
		}
		seq, _ := streamSeqTime(m)
		return seq, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("find the stream's position at %s: no reply from stream %s", t.UTC().Format(time.RFC3339Nano), subjects.Stream)
}

// ScanPasses counts the passes of shared replay scans so far.
func (b *Bus) ScanPasses() uint64 { return b.scan.passes.Load() }

// ScannedMessages counts the stream messages shared replay scans have read.
func (b *Bus) ScannedMessages() uint64 { return b.scan.scanned.Load() }

func (s *scanner) enterDirect() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running || s.direct >= s.directMax {
		return false
	}
	s.direct++
	return true
}

func (s *scanner) leaveDirect() {
	s.mu.Lock()
	s.direct--
	s.mu.Unlock()
}

// read has the scanner collect the events of tid in (after, through].
func (s *scanner) read(ctx context.Context, tid string, after, through uint64) (*scanReq, error) {
	r := &scanReq{tid: tid, after: after, through: through, done: make(chan struct{})}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if !s.running {
		if !s.b.goBackground(s.run) { // it waits for s.mu
			s.mu.Unlock()
			return nil, ErrClosed
		}
		s.running = true
	}
	switch {
	case s.nactive > 0 && after+1 >= s.cursor:
		s.addLocked(r) // the pass has not reached the range yet
	case s.nactive > 0 && through >= s.cursor:
		r.behind, r.wrapped = s.cursor, true
		s.addLocked(r)
	default:
		s.waiting = append(s.waiting, r)
	}
	s.mu.Unlock()
	select {
	case <-r.done:
		return r, r.err
	case <-ctx.Done():
		s.drop(r)
		return nil, ctx.Err()
	}
}

func (s *scanner) addLocked(r *scanReq) {
	s.passReqs++
	heap.Push(&s.byEnd, r)
	s.active[r.tid] = append(s.active[r.tid], r)
	s.nactive++
	s.end = max(s.end, r.through)
}

// drop forgets a replay that stopped waiting.
func (s *scanner) drop(r *scanReq) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.finished {
		return
	}
	if i := indexOf(s.waiting, r); i >= 0 {
		s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
	} else {
		s.removeLocked(r) // its entry in byEnd is skipped when it comes up
	}
	r.finished = true
}

func indexOf(rs []*scanReq, r *scanReq) int {
	for i, x := range rs {
		if x == r {
			return i
		}
	}
	return -1
}

// removeLocked takes an active replay out of the pass.
func (s *scanner) removeLocked(r *scanReq) {
	rs := s.active[r.tid]
	i := indexOf(rs, r)
	if i < 0 {
		return
	}
	if len(rs) == 1 {
		delete(s.active, r.tid)
	} else {
		s.active[r.tid] = append(rs[:i], rs[i+1:]...)
	}
	s.nactive--
}

func (s *scanner) finishLocked(r *scanReq, err error) {
	s.removeLocked(r)
	r.finished = true
	if r.wrapped {
		slices.SortFunc(r.events, func(a, b Event) int { return cmp.Compare(a.Seq, b.Seq) })
	}
	r.err = err
	close(r.done)
}

// failLocked ends every replay the scanner holds with err.
func (s *scanner) failLocked(err error) {
	for _, rs := range s.active {
		for _, r := range rs {
			r.err = err
			r.finished = true
			close(r.done)
		}
	}
	clear(s.active)
	s.nactive = 0
	clear(s.byEnd)
	s.byEnd = s.byEnd[:0]
	for _, r := range s.waiting {
		r.err = err
		r.finished = true
		close(r.done)
	}
	s.waiting = nil
}

// run reads passes until no replay waits. While it routes one batch, the
// next is already being read.
func (s *scanner) run() {
	var pre *prefetch
	defer func() { pre.wait() }()
	for {
		s.mu.Lock()
		if s.stopped {
			s.failLocked(ErrClosed)
			s.running = false
			s.mu.Unlock()
			return
		}
		if s.nactive == 0 {
			if s.passReqs > 0 {
				s.b.log.Debug("replay scan pass", "replays", s.passReqs, "from_seq", s.passFrom,
					"through_seq", s.cursor-1, "messages", s.passMsgs, "took", time.Since(s.passStart).Round(time.Microsecond))
				s.passReqs = 0
			}
			if len(s.waiting) == 0 {
				s.running = false
				s.mu.Unlock()
				return
			}
			s.end = 0
			clear(s.byEnd) // what is left finished early
			s.byEnd = s.byEnd[:0]
			s.cursor = s.waiting[0].after + 1
			for _, r := range s.waiting {
				s.cursor = min(s.cursor, r.after+1)
				s.addLocked(r)
			}
			s.passReqs, s.passFrom, s.passMsgs, s.passStart = len(s.waiting), s.cursor, 0, time.Now()
			s.waiting = nil
			s.passes.Add(1)
		}
		from, end := s.cursor, s.end
		s.mu.Unlock()

		var msgs []storedMsg
		var err error
		if pre != nil && pre.from == from {
			// An empty answer speaks only of what the read asked for: the
			// range may have grown since with events stored after it.
			end = pre.end
			msgs, err = pre.wait()
		} else {
			pre.wait()
			msgs, err = s.readBatch(from, end)
		}
		pre = nil
		if err == nil && len(msgs) > 0 {
			if next := msgs[len(msgs)-1].seq + 1; next <= end {
				pre = s.prefetch(next, end)
			}
		}
		s.scanned.Add(uint64(len(msgs)))

		s.mu.Lock()
		s.passMsgs += uint64(len(msgs))
		if err != nil {
			// The replays of this pass fail; those waiting for the next
			// one try again then.
			for _, r := range s.byEnd {
				if !r.finished {
					s.finishLocked(r, err)
				}
			}
			clear(s.byEnd)
			s.byEnd = s.byEnd[:0]
			s.mu.Unlock()
			continue
		}
		for _, m := range msgs {
			s.routeLocked(m)
		}
		if len(msgs) == 0 {
			s.cursor = end + 1 // nothing stored in [from, end]: deleted
		} else {
			s.cursor = max(from, msgs[len(msgs)-1].seq) + 1
		}
		for len(s.byEnd) > 0 && s.byEnd[0].through < s.cursor {
			r := heap.Pop(&s.byEnd).(*scanReq)
			switch {
			case r.finished:
			case r.behind > 0:
				// The part it joined for is read: the rest, behind,
				// waits for the next pass.
				s.removeLocked(r)
				r.through, r.behind = r.behind-1, 0
				s.waiting = append(s.waiting, r)
			default:
				s.finishLocked(r, nil)
			}
		}
		s.mu.Unlock()
	}
}

// prefetch is a scan read running ahead of the pass.
type prefetch struct {
	from, end uint64
	done      chan struct{}
	msgs      []storedMsg
	err       error
}

func (s *scanner) prefetch(from, end uint64) *prefetch {
	p := &prefetch{from: from, end: end, done: make(chan struct{})}
	if !s.b.goBackground(func() {
		defer close(p.done)
		p.msgs, p.err = s.readBatch(from, end)
	}) {
		return nil
	}
	return p
}

// wait returns the prefetched batch; a nil prefetch has none.
func (p *prefetch) wait() ([]storedMsg, error) {
	if p == nil {
		return nil, nil
	}
	<-p.done
	return p.msgs, p.err
}

// replaysByEnd orders the replays of a pass by the end of their range, so
// that a pass finishes them as its cursor passes it. Entries that finished
// early (overflow, dropped) stay until they reach the top.
type replaysByEnd []*scanReq

func (h replaysByEnd) Len() int           { return len(h) }
func (h replaysByEnd) Less(i, j int) bool { return h[i].through < h[j].through }
func (h replaysByEnd) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *replaysByEnd) Push(x any)        { *h = append(*h, x.(*scanReq)) }
func (h *replaysByEnd) Pop() any {
	old := *h
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return r
}

// storedMsg is a message a scan read, with the subject, sequence and time
// the stream gave it (see streamHeader: a publisher may have set headers of
// the same names).
type storedMsg struct {
	subject string
	seq     uint64
	time    time.Time
	data    []byte
}

// routeLocked gives m to the active replays of its thread.
func (s *scanner) routeLocked(m storedMsg) {
	rest, ok := strings.CutPrefix(m.subject, "thread.")
	if !ok {
		return
	}
	tid, ok := strings.CutSuffix(rest, ".out")
	if !ok {
		return
	}
	rs := s.active[tid]
	if len(rs) == 0 {
		return
	}
	seq := m.seq
	var ev Event
	var full []*scanReq
	for _, r := range rs {
		if seq <= r.after || seq > r.through {
			continue
		}
		if ev.Frame == nil {
			ev = Event{Thread: tid, Seq: seq, Time: m.time, Frame: frame.Event(m.data, tid, seq)}
		}
		r.events = append(r.events, ev)
		r.bytes += len(ev.Frame)
		if len(r.events) > scanMaxEvents || r.bytes > scanMaxBytes {
			full = append(full, r)
		}
	}
	for _, r := range full {
		r.overflow, r.events = true, nil
		s.finishLocked(r, nil)
	}
}

// readBatch reads up to scanBatch messages of any subject from sequence
// from on. An empty result means nothing is stored from `from` on.
func (s *scanner) readBatch(from, end uint64) ([]storedMsg, error) {
	n := int(min(uint64(scanBatch), end-from+1))
	var err error
	for try := 0; try < scanReadTries; try++ {
		var msgs []storedMsg
		if msgs, err = s.readOnce(from, n); err == nil {
			return msgs, nil
		}
		if s.b.bg.Err() != nil {
			return nil, ErrClosed
		}
	}
	return nil, err
}

func (s *scanner) readOnce(from uint64, n int) ([]storedMsg, error) {
	ctx, cancel := context.WithTimeout(s.b.bg, feedIOTimeout)
	defer cancel()
	it, err := jetstreamext.GetBatch(ctx, s.b.js, subjects.Stream, n, jetstreamext.GetBatchSeq(from), jetstreamext.GetBatchMaxBytes(scanBatchBytes))
	if err != nil {
		return nil, fmt.Errorf("scan stream %s from %d: %w", subjects.Stream, from, err)
	}
	msgs := make([]storedMsg, 0, n)
	for m, err := range it {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("scan stream %s from %d: %w", subjects.Stream, from, err)
		}
		seq, ts := streamSeqTime(m)
		msgs = append(msgs, storedMsg{subject: streamHeader(m.Header, jetstream.SubjectHeader), seq: seq, time: ts, data: m.Data})
	}
	if len(msgs) == 0 {
		// See History: a timeout ends a batch without an error.
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("scan stream %s from %d: %w", subjects.Stream, from, err)
		}
		return nil, fmt.Errorf("scan stream %s from %d: no reply", subjects.Stream, from)
	}
	return msgs, nil
}
