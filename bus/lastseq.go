package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/threadbus/threadbus/subjects"
)

// lastSeqBatch is how many subjects one lookup asks for: nats-server answers
// a multi-subject direct get with at most 1024 messages. lastSeqParallel
// lookups may be in flight at once: a storm's binds then wait for a short
// lookup, not behind a queue of long ones.
const (
	lastSeqBatch    = 1024
	lastSeqParallel = 4
)

// lastSeqReader coalesces the lookups of the last sequence of a subject that
// new feeds make (see hub.position): a reconnect storm would otherwise send
// one request per thread. Lookups that arrive while one is in flight go out
// together in the next request, so none is answered with a read made before
// it was asked.
type lastSeqReader struct {
	b       *Bus
	mu      sync.Mutex
	waiting map[string][]chan lastSeqResult // by subject
	order   []string                        // subjects of waiting, first asked first
	running int                             // lookups in flight
}

type lastSeqResult struct {
	seq uint64
	at  time.Time // when the message at seq was stored
	err error
}

// lastMsg is a subject's last stored message: its sequence and time.
type lastMsg struct {
	seq uint64
	at  time.Time
}

// lastSeq returns the sequence and time of the last message stored on subj,
// 0 if there is none.
func (r *lastSeqReader) lastSeq(ctx context.Context, subj string) (uint64, time.Time, error) {
	ch := make(chan lastSeqResult, 1) // the reader never waits for a caller that gave up
	r.mu.Lock()
	if r.running < lastSeqParallel {
		if !r.b.goBackground(r.run) { // it waits for r.mu
			r.mu.Unlock()
			return 0, time.Time{}, ErrClosed
		}
		r.running++
	}
	if r.waiting == nil {
		r.waiting = make(map[string][]chan lastSeqResult)
	}
	if _, ok := r.waiting[subj]; !ok {
		r.order = append(r.order, subj)
	}
	r.waiting[subj] = append(r.waiting[subj], ch)
	r.mu.Unlock()
	select {
	case res := <-ch:
		return res.seq, res.at, res.err
	case <-ctx.Done():
		return 0, time.Time{}, fmt.Errorf("last message of %s: %w", subj, ctx.Err())
	}
}

// run sends the waiting lookups, up to lastSeqBatch at a time, until none is
// left.
func (r *lastSeqReader) run() {
	for {
		r.mu.Lock()
		if len(r.order) == 0 {
			r.running--
			r.mu.Unlock()
			return
		}
		// Share what waits between the lookups in flight.
		n := min(len(r.order), lastSeqBatch, max(lastSeqMin, len(r.order)/r.running))
		subjs := r.order[:n:n]
		r.order = append([]string(nil), r.order[n:]...)
		waiters := make([][]chan lastSeqResult, n)
		for i, s := range subjs {
			waiters[i] = r.waiting[s]
			delete(r.waiting, s)
		}
		r.mu.Unlock()

		seqs, err := r.read(subjs)
		for i, s := range subjs {
			res := lastSeqResult{seq: seqs[s].seq, at: seqs[s].at, err: err}
			for _, ch := range waiters[i] {
				ch <- res
			}
		}
	}
}

// lastSeqMin is the smallest lookup worth sharing out.
const lastSeqMin = 64

// read looks up the last sequences of subjs, lastSeqBatch at a time; a
// subject without messages is absent from the result.
func (r *lastSeqReader) read(subjs []string) (map[string]lastMsg, error) {
	seqs := make(map[string]lastMsg, len(subjs))
	for len(subjs) > 0 {
		n := min(len(subjs), lastSeqBatch)
		rest, err := r.readOnce(subjs[:n], seqs)
		if err != nil {
			return nil, fmt.Errorf("last message of %d subjects: %w", n, err)
		}
		subjs = append(rest, subjs[n:]...)
	}
	return seqs, nil
}

// readOnce sends one request. The server may stop short of every subject
// (its byte limit); it returns the subjects still to be asked for.
func (r *lastSeqReader) readOnce(subjs []string, seqs map[string]lastMsg) ([]string, error) {
	ctx, cancel := context.WithTimeout(r.b.bg, feedIOTimeout)
	defer cancel()
	it, err := jetstreamext.GetLastMsgsFor(ctx, r.b.js, subjects.Stream, subjs)
	if err != nil {
		return nil, err
	}
	got, pending := 0, uint64(0)
	for m, err := range it {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			return nil, nil // none of subjs has a message
		}
		if err != nil {
			return nil, err
		}
		seq, at := streamSeqTime(m)
		seqs[streamHeader(m.Header, jetstream.SubjectHeader)] = lastMsg{seq, at}
		got++
		pending = numPending(m)
	}
	if got == 0 {
		// A timeout ends the answer without an error (see History).
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, errors.New("no reply")
	}
	if pending == 0 {
		return nil, nil // the answer is complete: the subjects not in it have no message
	}
	var rest []string
	for _, s := range subjs {
		if _, ok := seqs[s]; !ok {
			rest = append(rest, s)
		}
	}
	if len(rest) == len(subjs) {
		return nil, errors.New("answer ended early")
	}
	return rest, nil
}
