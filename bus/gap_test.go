package bus_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// republisher plays the server's republish after the test turned it off:
// it sends stored events of one thread to its live subject, with the headers
// nats-server v2.15 sets (stream.go, processJetStreamMsg), and only the ones
// the test chooses, as the at-most-once live path would.
type republisher struct {
	t       *testing.T
	e       *testEnv
	tid     string
	outSubj string
	live    string
	prevSeq uint64 // the last stored sequence of outSubj: Nats-Last-Sequence of the next event
}

// disableRepublish removes RePublish from the stream, so that only the test
// publishes on the live subjects.
func disableRepublish(t *testing.T, e *testEnv) {
	t.Helper()
	info, err := e.stream.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.RePublish = nil
	if _, err := e.js.UpdateStream(testCtx(t), cfg); err != nil {
		t.Fatalf("update stream without RePublish: %v", err)
	}
	if info, err = e.stream.Info(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if info.Config.RePublish != nil {
		t.Fatalf("the server still republishes: %+v", info.Config.RePublish)
	}
}

func newRepublisher(t *testing.T, e *testEnv, tid string) *republisher {
	out, err := subjects.ThreadOut(tid)
	if err != nil {
		t.Fatal(err)
	}
	live, err := subjects.Live(tid)
	if err != nil {
		t.Fatal(err)
	}
	return &republisher{t: t, e: e, tid: tid, outSubj: out, live: live}
}

// liveEvent is a stored event and the live message the server would have
// republished for it.
type liveEvent struct {
	stored
	msg *nats.Msg
}

// store publishes an event to the stream and returns it with its live message.
func (r *republisher) store(data []byte) liveEvent {
	r.t.Helper()
	seq := r.e.publishEvent(r.t, r.tid, data)
	m, err := r.e.stream.GetMsg(testCtx(r.t), seq)
	if err != nil {
		r.t.Fatalf("get stored event %d: %v", seq, err)
	}
	msg := nats.NewMsg(r.live)
	msg.Data = data
	msg.Header.Set("Nats-Stream", subjects.Stream)
	msg.Header.Set("Nats-Subject", r.outSubj)
	msg.Header.Set("Nats-Sequence", strconv.FormatUint(seq, 10))
	msg.Header.Set("Nats-Time-Stamp", m.Time.UTC().Format(time.RFC3339Nano))
	msg.Header.Set("Nats-Last-Sequence", strconv.FormatUint(r.prevSeq, 10))
	r.prevSeq = seq
	return liveEvent{stored: stored{seq: seq, data: data}, msg: msg}
}

func (r *republisher) send(ev liveEvent) {
	r.t.Helper()
	if err := r.e.agent.PublishMsg(ev.msg); err != nil {
		r.t.Fatalf("republish %d: %v", ev.seq, err)
	}
}

// TestGapRepair: the live path loses events; the feed reads them back from
// the stream before it delivers later ones, so the listener still gets every
// event in order, once.
func TestGapRepair(t *testing.T) {
	e := newEnv(t)
	disableRepublish(t, e)
	rp := newRepublisher(t, e, "gappy")

	var r recorder
	pos, err := e.bus.Join(testCtx(t), "gappy", &r)
	if err != nil || pos != 0 {
		t.Fatalf("Join = %d, %v; want 0", pos, err)
	}
	defer e.bus.Leave("gappy", &r)
	before := e.bus.GapsRepaired()

	const n = 20
	// Lost on the live path: a run of two, a single one, a run of three.
	// The last event is never lost: nothing after it would reveal the gap.
	lost := map[int]bool{2: true, 3: true, 7: true, 11: true, 12: true, 13: true}
	var all []liveEvent
	for i := range n {
		ev := rp.store(fmt.Appendf(nil, `{"type":"tool_completed","i":%d}`, i))
		all = append(all, ev)
		// Other traffic between the thread's events: its previous sequence
		// is per subject, not the stream's previous one.
		e.publishEvent(t, "quiet", []byte(`{}`))
		if _, err := e.bus.PublishThreadIn(testCtx(t), "gappy", nil, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if !lost[i] {
			rp.send(ev)
		}
		if i == 5 {
			rp.send(ev) // duplicated on the live path
		}
	}
	rp.send(all[4]) // a stale duplicate, long after
	// A live message without the republish headers is dropped, not fatal.
	if err := e.agent.Publish(rp.live, []byte(`{"forged":true}`)); err != nil {
		t.Fatal(err)
	}
	marker := rp.store([]byte(`{"type":"marker"}`))
	rp.send(marker)
	all = append(all, marker)

	r.waitSeq(t, "listener", marker.seq)
	evs, _ := r.snapshot()
	want := make([]stored, len(all))
	for i, ev := range all {
		want[i] = ev.stored
	}
	if got := eventSeqs(evs); !slices.Equal(got, storedSeqs(want)) {
		t.Fatalf("delivered\n %v\nwant\n %v", got, storedSeqs(want))
	}
	for i, ev := range evs {
		if !bytes.Equal(ev.Frame, frame.Event(want[i].data, "gappy", want[i].seq)) {
			t.Errorf("event %d: frame %s", ev.Seq, ev.Frame)
		}
		stamp, _ := time.Parse(time.RFC3339Nano, all[i].msg.Header.Get("Nats-Time-Stamp"))
		if !ev.Time.Equal(stamp) {
			t.Errorf("event %d: time %v, stored %v", ev.Seq, ev.Time, stamp)
		}
	}
	// A repair reads everything stored after the last delivered event:
	// one may fill several runs when the next were stored already.
	if got := e.bus.GapsRepaired() - before; got < 1 || got > 3 {
		t.Errorf("GapsRepaired went up by %d, want 1 to 3 (at most one per run of lost events)", got)
	}
}

// TestGapRepairFirstEvent: the first event after the position is lost.
func TestGapRepairFirstEvent(t *testing.T) {
	e := newEnv(t)
	disableRepublish(t, e)
	rp := newRepublisher(t, e, "t")
	old := rp.store([]byte(`{"n":0}`)) // before the position: never delivered
	var r recorder
	pos, err := e.bus.Join(testCtx(t), "t", &r)
	if err != nil || pos != old.seq {
		t.Fatalf("Join = %d, %v; want %d", pos, err, old.seq)
	}
	defer e.bus.Leave("t", &r)
	rp.send(old) // stored before the position: dropped
	lostEv := rp.store([]byte(`{"n":1}`))
	next := rp.store([]byte(`{"n":2}`))
	rp.send(next)
	r.waitSeq(t, "listener", next.seq)
	if got := r.seqs(); !slices.Equal(got, []uint64{lostEv.seq, next.seq}) {
		t.Errorf("delivered %v, want [%d %d]", got, lostEv.seq, next.seq)
	}
	if e.bus.GapsRepaired() != 1 {
		t.Errorf("GapsRepaired = %d, want 1", e.bus.GapsRepaired())
	}
}

// TestGapUnrepairable: when the stream cannot fill a gap, the listeners are
// told with ErrGapUnrepaired and removed, and a later Join starts afresh.
func TestGapUnrepairable(t *testing.T) {
	e := newEnv(t)
	disableRepublish(t, e)
	rp := newRepublisher(t, e, "t")
	var r1, r2 recorder
	for _, r := range []*recorder{&r1, &r2} {
		if _, err := e.bus.Join(testCtx(t), "t", r); err != nil {
			t.Fatal(err)
		}
	}
	first := rp.store([]byte(`{}`))
	rp.send(first)
	r1.waitSeq(t, "r1", first.seq)

	// A live event whose predecessor the stream never had (as after
	// retention dropped it).
	ghost := rp.store([]byte(`{"ghost":true}`))
	ghost.msg.Header.Set("Nats-Last-Sequence", strconv.FormatUint(ghost.seq+50, 10))
	ghost.msg.Header.Set("Nats-Sequence", strconv.FormatUint(ghost.seq+51, 10))
	rp.send(ghost)
	for name, r := range map[string]*recorder{"r1": &r1, "r2": &r2} {
		waitFor(t, name+" to fail", func() bool { _, f := r.snapshot(); return len(f) > 0 })
		evs, failed := r.snapshot()
		if len(failed) != 1 || !errors.Is(failed[0], bus.ErrGapUnrepaired) {
			t.Errorf("%s: Fail(%v), want one ErrGapUnrepaired", name, failed)
		}
		// The real event before the phantom gap was delivered by the repair
		// attempt; nothing after the failure.
		if got := eventSeqs(evs); !slices.Equal(got, []uint64{first.seq, ghost.seq}) {
			t.Errorf("%s: delivered %v, want [%d %d]", name, got, first.seq, ghost.seq)
		}
	}
	e.bus.Leave("t", &r1) // already removed: harmless

	var r3 recorder
	pos, err := e.bus.Join(testCtx(t), "t", &r3)
	if err != nil || pos != ghost.seq {
		t.Fatalf("Join after the feed failed = %d, %v; want %d", pos, err, ghost.seq)
	}
	defer e.bus.Leave("t", &r3)
	next := rp.store([]byte(`{}`))
	rp.send(next)
	r3.waitSeq(t, "r3", next.seq)
	if got := r3.seqs(); !slices.Equal(got, []uint64{next.seq}) {
		t.Errorf("r3 got %v, want [%d]", got, next.seq)
	}
	if _, failed := r1.snapshot(); len(failed) != 1 {
		t.Errorf("r1 failed %d times", len(failed))
	}
}

// TestForeignStreamHeaders: an agent may publish an event carrying headers
// named like the stream's own (a message it read with a direct get and
// forwards, headers and all). The stream appends its Nats-Sequence,
// Nats-Time-Stamp, Nats-Last-Sequence and Nats-Num-Pending after them; the
// bus must read the stream's, or one such event would give History a wrong
// sequence and make the live feed drop every later event as already seen.
func TestForeignStreamHeaders(t *testing.T) {
	e := newEnv(t)
	var r recorder
	if _, err := e.bus.Join(testCtx(t), "t", &r); err != nil {
		t.Fatal(err)
	}
	defer e.bus.Leave("t", &r)

	first := e.publishEvent(t, "t", []byte(`{"n":0}`))
	out, _ := subjects.ThreadOut("t")
	fwd := nats.NewMsg(out)
	fwd.Data = []byte(`{"forwarded":true}`)
	fwd.Header.Set("Nats-Stream", "ELSEWHERE")
	fwd.Header.Set("Nats-Subject", "thread.t.out")
	fwd.Header.Set("Nats-Sequence", "999999")
	fwd.Header.Set("Nats-Last-Sequence", "999998")
	fwd.Header.Set("Nats-Time-Stamp", "2001-01-01T00:00:00Z")
	fwd.Header.Set("Nats-Num-Pending", "0")
	ack, err := e.js.PublishMsg(testCtx(t), fwd)
	if err != nil {
		t.Fatal(err)
	}
	var want []uint64
	want = append(want, first, ack.Sequence)
	for range 3 {
		want = append(want, e.publishEvent(t, "t", []byte(`{}`)))
	}

	hist := readHistory(t, e.bus, "t", bus.Start{})
	var got []uint64
	for _, y := range hist {
		got = append(got, y.ev.Seq)
		if y.ev.Time.Year() == 2001 {
			t.Errorf("History: event %d has the forwarded time %v", y.ev.Seq, y.ev.Time)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("History yields %v, want %v", got, want)
	}
	if len(hist) == len(want) && hist[1].pending != 3 {
		t.Errorf("History: pending of the forwarded event %d, want 3", hist[1].pending)
	}

	waitFor(t, "the listener to get the last event (or something past it)", func() bool {
		evs, failed := r.snapshot()
		return len(failed) > 0 || len(evs) > 0 && evs[len(evs)-1].Seq >= want[len(want)-1]
	})
	evs, failed := r.snapshot()
	if len(failed) > 0 {
		t.Errorf("live: the feed failed: %v", failed)
	}
	if got := eventSeqs(evs); !slices.Equal(got, want) {
		t.Errorf("live: delivered %v, want %v", got, want)
	}
	for _, ev := range evs {
		if ev.Time.Year() == 2001 {
			t.Errorf("live: event %d has the forwarded time %v", ev.Seq, ev.Time)
		}
	}
	if e.bus.GapsRepaired() != 0 {
		t.Errorf("GapsRepaired = %d, want 0", e.bus.GapsRepaired())
	}
}
