package bus_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/frame"
)

// stored is what the test published to a thread, to compare History with.
type stored struct {
	seq  uint64
	data []byte
}

// publishInterleaved publishes n events to tid, each followed by an event of
// another thread and, every third time, a client frame of tid (thread.<tid>.in),
// so that the thread's sequences are not contiguous and its .in frames sit
// between its events.
func publishInterleaved(t *testing.T, e *testEnv, tid, other string, n int) []stored {
	t.Helper()
	var out []stored
	for i := range n {
		data := fmt.Appendf(nil, `{"type":"agent_thinking","payload":{"step_number":%d}}`, i)
		if i%5 == 4 {
			data = fmt.Appendf(nil, "not json %d", i) // wrapped by frame.Event
		}
		out = append(out, stored{seq: e.publishEvent(t, tid, data), data: data})
		e.publishEvent(t, other, fmt.Appendf(nil, `{"type":"other","i":%d}`, i))
		if i%3 == 0 {
			if _, err := e.bus.PublishThreadIn(testCtx(t), tid, nil, []byte(`{"type":"user_message"}`)); err != nil {
				t.Fatalf("PublishThreadIn: %v", err)
			}
		}
	}
	return out
}

// storedSince returns the events stored at or after at, judged by the
// timestamps History read (all), of which events are the published bodies.
func storedSince(all []yielded, events []stored, at time.Time) []stored {
	var want []stored
	for i, y := range all {
		if !y.ev.Time.Before(at) {
			want = append(want, events[i])
		}
	}
	return want
}

type yielded struct {
	ev      bus.Event
	pending uint64
}

func readHistory(t *testing.T, b *bus.Bus, tid string, start bus.Start) []yielded {
	t.Helper()
	var out []yielded
	err := b.History(testCtx(t), tid, start, func(ev bus.Event, pending uint64) bool {
		out = append(out, yielded{ev, pending})
		return true
	})
	if err != nil {
		t.Fatalf("History(%s, %v): %v", tid, start, err)
	}
	return out
}

// checkHistory compares what History yielded with the expected stored
// events: same sequences in the same order, each Frame built by frame.Event
// from the stored body, and the first event's pending+1 equal to the count.
func checkHistory(t *testing.T, what, tid string, got []yielded, want []stored) {
	t.Helper()
	gotSeqs := make([]uint64, len(got))
	for i, y := range got {
		gotSeqs[i] = y.ev.Seq
	}
	wantSeqs := make([]uint64, len(want))
	for i, s := range want {
		wantSeqs[i] = s.seq
	}
	if !slices.Equal(gotSeqs, wantSeqs) {
		t.Fatalf("%s: sequences\n got %v\nwant %v", what, gotSeqs, wantSeqs)
	}
	for i, y := range got {
		if y.ev.Thread != tid {
			t.Errorf("%s: event %d: Thread %q, want %q", what, y.ev.Seq, y.ev.Thread, tid)
		}
		if wantFrame := frame.Event(want[i].data, tid, want[i].seq); !bytes.Equal(y.ev.Frame, wantFrame) {
			t.Errorf("%s: event %d: Frame %s, want %s", what, y.ev.Seq, y.ev.Frame, wantFrame)
		}
		if y.ev.Time.IsZero() {
			t.Errorf("%s: event %d: zero Time", what, y.ev.Seq)
		}
		if i > 0 && y.ev.Time.Before(got[i-1].ev.Time) {
			t.Errorf("%s: event %d stored at %v, before the previous one (%v)", what, y.ev.Seq, y.ev.Time, got[i-1].ev.Time)
		}
	}
	if len(got) > 0 && got[0].pending+1 != uint64(len(got)) {
		t.Errorf("%s: first event's pending %d + 1 != %d events yielded", what, got[0].pending, len(got))
	}
}

func TestHistoryInterleaved(t *testing.T) {
	e := newEnv(t)
	events := publishInterleaved(t, e, "thread_a", "thread_b", 30)

	all := readHistory(t, e.bus, "thread_a", bus.Start{})
	checkHistory(t, "from the start", "thread_a", all, events)

	// Start after each of the thread's sequences, after another thread's
	// sequence lying in the middle, and after the end.
	starts := []uint64{0, events[0].seq, events[0].seq + 1, events[14].seq, events[14].seq + 1, events[29].seq - 1, events[29].seq, e.lastSeq(t) + 100}
	for _, after := range starts {
		var want []stored
		for _, s := range events {
			if s.seq > after {
				want = append(want, s)
			}
		}
		got := readHistory(t, e.bus, "thread_a", bus.Start{AfterSeq: after})
		checkHistory(t, fmt.Sprintf("after seq %d", after), "thread_a", got, want)
	}

	// Start at a time: every event stored at or after it. The expectation is
	// taken from the stored timestamps, so equal timestamps cannot make the
	// test flaky.
	for _, k := range []int{0, 1, 17, 29} {
		at := all[k].ev.Time
		want := storedSince(all, events, at)
		if k > 0 && len(want) != len(all)-k && !all[k-1].ev.Time.Equal(at) {
			t.Fatalf("time %v: %d events at or after it, want %d", at, len(want), len(all)-k)
		}
		got := readHistory(t, e.bus, "thread_a", bus.Start{Time: at})
		checkHistory(t, fmt.Sprintf("at time of event %d", k), "thread_a", got, want)
	}
	if got := readHistory(t, e.bus, "thread_a", bus.Start{Time: all[29].ev.Time.Add(time.Second)}); len(got) != 0 {
		t.Errorf("start after the last event's time: %d events, want none", len(got))
	}
	if got := readHistory(t, e.bus, "thread_a", bus.Start{Time: time.Unix(1, 0)}); len(got) != len(events) {
		t.Errorf("start at 1970: %d events, want %d", len(got), len(events))
	}
}

// TestHistoryManyBatches reads more events than one direct get returns.
func TestHistoryManyBatches(t *testing.T) {
	e := newEnv(t)
	const n = 700
	var events []stored
	for i := range n {
		data := fmt.Appendf(nil, `{"type":"tool_executing","i":%d}`, i)
		events = append(events, stored{seq: e.publishEvent(t, "big", data), data: data})
		if i%50 == 0 {
			e.publishEvent(t, "small", []byte(`{}`))
		}
	}
	got := readHistory(t, e.bus, "big", bus.Start{})
	checkHistory(t, "700 events", "big", got, events)
	// Nothing is published meanwhile, so pending counts down to 0 across
	// batches: it is the number of the thread's events after this one.
	for i, y := range got {
		if want := uint64(n - 1 - i); y.pending != want {
			t.Fatalf("event %d (index %d): pending %d, want %d", y.ev.Seq, i, y.pending, want)
		}
	}
	// From the middle of the second batch.
	got = readHistory(t, e.bus, "big", bus.Start{AfterSeq: events[300].seq})
	checkHistory(t, "after the 301st event", "big", got, events[301:])
}

func TestHistoryStops(t *testing.T) {
	e := newEnv(t)
	var seqs []uint64
	for range 300 {
		seqs = append(seqs, e.publishEvent(t, "t", []byte(`{}`)))
	}
	// Stop inside the first batch, at its last event, and in the second.
	for _, stopAt := range []int{1, 3, 256, 257, 280} {
		var got []uint64
		err := e.bus.History(testCtx(t), "t", bus.Start{}, func(ev bus.Event, _ uint64) bool {
			got = append(got, ev.Seq)
			return len(got) < stopAt
		})
		if err != nil {
			t.Fatalf("History stopping at %d: %v", stopAt, err)
		}
		if !slices.Equal(got, seqs[:stopAt]) {
			t.Errorf("fn returned false at event %d: History called it for %v, want %v", stopAt, got, seqs[:stopAt])
		}
	}
}

func TestHistoryEmptyThread(t *testing.T) {
	e := newEnv(t)
	e.publishEvent(t, "busy", []byte(`{}`))
	if _, err := e.bus.PublishThreadIn(testCtx(t), "only_in", nil, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	for _, tid := range []string{"never_used", "only_in"} {
		for _, start := range []bus.Start{{}, {AfterSeq: 5}, {Time: time.Now().Add(-time.Hour)}} {
			called := 0
			err := e.bus.History(testCtx(t), tid, start, func(bus.Event, uint64) bool { called++; return true })
			if err != nil || called != 0 {
				t.Errorf("History(%s, %v) on a thread without events: %d events, err %v; want none and nil", tid, start, called, err)
			}
		}
	}
}

// TestHistoryContextEnded: a read that could not ask the stream must fail,
// not look like a thread without events. A caller that replays history
// would otherwise report a complete replay of nothing.
func TestHistoryContextEnded(t *testing.T) {
	e := newEnv(t)
	e.publishEvent(t, "t", []byte(`{}`))

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()
	for name, ctx := range map[string]context.Context{"cancelled": cancelled, "expired": expired} {
		called := 0
		err := e.bus.History(ctx, "t", bus.Start{}, func(bus.Event, uint64) bool { called++; return true })
		if err == nil {
			t.Errorf("History with a %s context: nil error after %d events; want an error", name, called)
		}
	}
}
