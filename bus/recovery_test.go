package bus_test

import (
	"slices"
	"testing"

	"github.com/threadbus/threadbus/bus"
)

// TestIdleCheckFindsUnrepublishedEvent: the last event of a thread is
// stored but its live copy is lost; nothing later reveals the gap. The
// periodic idle check reads it from the stream.
func TestIdleCheckFindsUnrepublishedEvent(t *testing.T) {
	e := newEnv(t)
	disableRepublish(t, e)
	rp := newRepublisher(t, e, "idle")
	var r recorder
	if _, err := e.bus.Join(testCtx(t), "idle", &r); err != nil {
		t.Fatal(err)
	}
	defer e.bus.Leave("idle", &r)
	first := rp.store([]byte(`{"type":"agent_started"}`))
	rp.send(first)
	r.waitSeq(t, "listener", first.seq)
	lost := rp.store([]byte(`{"type":"agent_completed"}`)) // never republished
	r.waitSeq(t, "listener", lost.seq)
	if got := r.seqs(); !slices.Equal(got, []uint64{first.seq, lost.seq}) {
		t.Errorf("delivered %v, want [%d %d]", got, first.seq, lost.seq)
	}
}

// TestResyncRetries: a gap is revealed while the stream cannot be read
// (direct gets off); the resync fails, retries, and delivers everything in
// order once the stream answers again.
func TestResyncRetries(t *testing.T) {
	e := newEnv(t)
	disableRepublish(t, e)
	rp := newRepublisher(t, e, "retry")
	var r recorder
	if _, err := e.bus.Join(testCtx(t), "retry", &r); err != nil {
		t.Fatal(err)
	}
	defer e.bus.Leave("retry", &r)
	lost := rp.store([]byte(`{"i":1}`))
	next := rp.store([]byte(`{"i":2}`))
	setDirect(t, e, false)
	rp.send(next) // reveals the gap: the resync cannot read the stream
	before := e.bus.GapsRepaired()
	waitFor(t, "a failed resync to be retried", func() bool { return bus.ResyncFailures(e.bus) >= 2 })
	if got := r.seqs(); len(got) != 0 {
		t.Fatalf("delivered %v before the gap was repaired", got)
	}
	setDirect(t, e, true)
	r.waitSeq(t, "listener", next.seq)
	if got := r.seqs(); !slices.Equal(got, []uint64{lost.seq, next.seq}) {
		t.Errorf("delivered %v, want [%d %d]", got, lost.seq, next.seq)
	}
	if e.bus.GapsRepaired() == before {
		t.Error("GapsRepaired did not count the repair")
	}
}

func setDirect(t *testing.T, e *testEnv, on bool) {
	t.Helper()
	info, err := e.stream.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.AllowDirect = on
	if _, err := e.js.UpdateStream(testCtx(t), cfg); err != nil {
		t.Fatalf("update stream with direct gets %v: %v", on, err)
	}
}
