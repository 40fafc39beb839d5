package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCheckRun checks the checker the scenarios rely on.
func TestCheckRun(t *testing.T) {
	want := []uint64{3, 5, 8, 9, 12}
	tests := []struct {
		got   []uint64
		start int
		err   string
	}{
		{[]uint64{3, 5, 8, 9, 12}, 0, ""},
		{[]uint64{8, 9}, 2, ""},
		{nil, 3, ""},
		{[]uint64{3, 8}, 0, "gap"},
		{[]uint64{3, 5, 5}, 0, "duplicate"},
		{[]uint64{3, 5, 3}, 0, "out of order"},
		{[]uint64{3, 4}, 0, "never published"},
		{[]uint64{3, 5}, 1, "before the replay start"},
		{[]uint64{5, 8}, 0, "gap"},
		{[]uint64{9, 12, 13}, 3, "past the thread's last event"},
	}
	for _, tt := range tests {
		err := checkRun(want, tt.got, tt.start)
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("checkRun(%v, %v, %d) = %v, want %q", want, tt.got, tt.start, err, tt.err)
		}
	}
	if i := indexAfter(want, 8); i != 3 {
		t.Errorf("indexAfter(8) = %d", i)
	}
	if i := indexAfter(want, 7); i != 2 {
		t.Errorf("indexAfter(7) = %d", i)
	}
}

// checkRun reports whether got is want[start:start+len(got)]: the events a
// binding received are a run of the thread's events in stream order, with
// no gap, no duplicate and nothing foreign. start is the index in want of
// the event the run must begin with (the binding's replay start).
func checkRun(want, got []uint64, start int) error {
	for i, seq := range got {
		if i > 0 && seq == got[i-1] {
			return fmt.Errorf("duplicate: seq %d delivered twice in a row at position %d", seq, i)
		}
		if i > 0 && seq < got[i-1] {
			return fmt.Errorf("out of order: seq %d after seq %d at position %d", seq, got[i-1], i)
		}
		j := start + i
		if j >= len(want) {
			return fmt.Errorf("seq %d at position %d is past the thread's last event %d (thread has %d events, run starts at index %d)", seq, i, lastOf(want), len(want), start)
		}
		if seq != want[j] {
			if _, found := slices.BinarySearch(want, seq); !found {
				return fmt.Errorf("seq %d at position %d was never published to this thread (want seq %d)", seq, i, want[j])
			}
			if seq > want[j] {
				return fmt.Errorf("gap: seq %d at position %d, but seq %d comes first (missing %d event(s))", seq, i, want[j], countBetween(want, want[j], seq))
			}
			return fmt.Errorf("seq %d at position %d, want seq %d (already delivered or before the replay start)", seq, i, want[j])
		}
	}
	return nil
}

// indexAfter returns the index in want of the first seq greater than since.
func indexAfter(want []uint64, since uint64) int {
	i, found := slices.BinarySearch(want, since)
	if found {
		i++
	}
	return i
}

func countBetween(want []uint64, from, to uint64) int {
	i, _ := slices.BinarySearch(want, from)
	j, _ := slices.BinarySearch(want, to)
	return j - i
}

func lastOf(s []uint64) uint64 {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1]
}

// waitUntil polls cond every few milliseconds until it holds or ctx ends.
// It is for conditions on the test's own state (an agent's progress), not
// for frames: clients have waitFor.
func waitUntil(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// segment is what one connection received for one binding: the
// thread_bound frame and the events up to the next thread_bound.
type segment struct {
	Bound   bound
	At      time.Time // when thread_bound was read
	Events  []frame
	Foreign []frame // events of other threads after thread_bound
}

// segments splits a connection's frames at every thread_bound. Events
// before the first thread_bound are returned as orphans.
func segments(frames []frame) (segs []segment, orphans []frame, err error) {
	for _, f := range frames {
		if f.Type == typeBound {
			b, err := parseBound(f)
			if err != nil {
				return nil, nil, err
			}
			segs = append(segs, segment{Bound: b, At: f.At})
			continue
		}
		if !f.isEvent() {
			continue
		}
		if len(segs) == 0 {
			orphans = append(orphans, f)
			continue
		}
		s := &segs[len(segs)-1]
		if f.ThreadID != s.Bound.ThreadID {
			s.Foreign = append(s.Foreign, f)
			continue
		}
		s.Events = append(s.Events, f)
	}
	return segs, orphans, nil
}

// replaySlack absorbs the granularity of the timestamps compared in
// checkReplayStart; all of them come from this machine's wall clock.
const replaySlack = 50 * time.Millisecond

// window is the interval in which the sidecar took the time it replays from
// (connection open or bind time): the client knows when it asked and when
// the answer arrived.
type window struct{ From, To time.Time }

// checkReplayStart checks that a binding without since, whose replay cut is
// somewhere in w minus grace, started its run with the right event: first
// (the first event it received) was stored at or after the earliest
// possible cut, and the event of the thread before it was stored before the
// latest possible cut.
func checkReplayStart(ctx context.Context, a *agent, want []uint64, first uint64, w window, grace time.Duration) error {
	lo := w.From.Add(-grace - replaySlack)
	hi := w.To.Add(-grace + replaySlack)
	i, found := slices.BinarySearch(want, first)
	if !found {
		return fmt.Errorf("first event seq %d was not published to this thread", first)
	}
	t0, err := a.storedAt(ctx, first)
	if err != nil {
		return err
	}
	if t0.Before(lo) {
		return fmt.Errorf("replay starts at seq %d stored at %s, before the replay window opened (%s = bind window start %s - grace %v - slack %v)",
			first, t0.Format(time.StampMicro), lo.Format(time.StampMicro), w.From.Format(time.StampMicro), grace, replaySlack)
	}
	if i == 0 {
		return nil
	}
	prev := want[i-1]
	tp, err := a.storedAt(ctx, prev)
	if err != nil {
		return err
	}
	if !tp.Before(hi) {
		return fmt.Errorf("replay starts at seq %d but seq %d, stored at %s, is inside the replay window (cut no later than %s = bind window end %s - grace %v + slack %v)",
			first, prev, tp.Format(time.StampMicro), hi.Format(time.StampMicro), w.To.Format(time.StampMicro), grace, replaySlack)
	}
	return nil
}
