package bench

import (
	"context"
	"math"
	"sync/atomic"
	"time"
)

// tally counts what receivers got, from any number of goroutines, and
// wakes the one goroutine waiting for the count to reach a level. It also
// records when the count reached its final value.
type tally struct {
	base  time.Time
	final int64

	n        atomic.Int64
	want     atomic.Int64
	wake     chan struct{}
	finished atomic.Int64 // time since base when n reached final; 0 before
}

func newTally(base time.Time, final int64) *tally {
	t := &tally{base: base, final: final, wake: make(chan struct{}, 1)}
	t.want.Store(math.MaxInt64)
	return t
}

// add counts d more. A waiter whose level is reached is woken.
func (t *tally) add(d int64) {
	n := t.n.Add(d)
	if n == t.final {
		t.finished.Store(int64(time.Since(t.base)))
	}
	// The waiter stores want before loading n, and add stores n before
	// loading want: one of the two sees the other.
	if n >= t.want.Load() {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

func (t *tally) count() int64 { return t.n.Load() }

// finishedAt is when the count reached final, as time since base; false
// while it has not.
func (t *tally) finishedAt() (time.Duration, bool) {
	d := t.finished.Load()
	return time.Duration(d), d != 0
}

// wait blocks until the count reaches want or ctx is done.
func (t *tally) wait(ctx context.Context, want int64) error {
	t.want.Store(want)
	for t.n.Load() < want {
		select {
		case <-t.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
