package bus_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
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

// TestStreamRecreated: THREADS is deleted while a listener is joined. The
// bus creates it again, moves to the new epoch and fails the feed with
// ErrStreamChanged (the sidecar closes such connections with 1013, and
// their resumes with the old epoch get recovered:false).
func TestStreamRecreated(t *testing.T) {
	e := newEnv(t)
	old := e.bus.Epoch()
	e.publishEvent(t, "reborn", []byte(`{}`))
	var r recorder
	if _, err := e.bus.Join(testCtx(t), "reborn", &r); err != nil {
		t.Fatal(err)
	}
	if err := e.js.DeleteStream(testCtx(t), subjects.Stream); err != nil {
		t.Fatalf("delete stream: %v", err)
	}
	waitFor(t, "the feed to fail", func() bool {
		_, failed := r.snapshot()
		return len(failed) > 0
	})
	if _, failed := r.snapshot(); !errors.Is(failed[0], bus.ErrStreamChanged) {
		t.Errorf("feed failed with %v, want ErrStreamChanged", failed[0])
	}
	if e.bus.Epoch() == old {
		t.Error("epoch unchanged after the stream was re-created")
	}
	if s, err := e.js.Stream(testCtx(t), subjects.Stream); err != nil {
		t.Errorf("stream not created again: %v", err)
	} else if c := s.CachedInfo().Config; c.MaxBytes != bus.DefaultMaxBytes || c.MaxMsgsPerSubject != bus.DefaultMaxMsgsPerSubject {
		t.Errorf("stream created again with MaxBytes %d, MaxMsgsPerSubject %d; want the sidecar's limits %d, %d",
			c.MaxBytes, c.MaxMsgsPerSubject, bus.DefaultMaxBytes, bus.DefaultMaxMsgsPerSubject)
	}
	if err := e.bus.Ready(testCtx(t)); err != nil {
		t.Errorf("Ready after the stream was created again: %v", err)
	}
	// A new feed of the new epoch delivers the new stream's events.
	var r2 recorder
	if _, err := e.bus.Join(testCtx(t), "reborn", &r2); err != nil {
		t.Fatal(err)
	}
	defer e.bus.Leave("reborn", &r2)
	seq := e.publishEvent(t, "reborn", []byte(`{}`))
	r2.waitSeq(t, "new listener", seq)
}

// TestSlowLookupDoesNotStallOtherThreads: a Join whose position lookup
// hangs (a replica that never answers) must not hold up the live events of
// other threads that share its dispatcher (one shard here).
func TestSlowLookupDoesNotStallOtherThreads(t *testing.T) {
	ns := startServer(t)
	e := &testEnv{ns: ns}
	e.bus = openBusWith(t, bus.Config{URL: ns.ClientURL(), Shards: 1})
	e.agent, e.js = connectAgent(t, ns.ClientURL())
	var err error
	if e.stream, err = e.js.Stream(testCtx(t), subjects.Stream); err != nil {
		t.Fatal(err)
	}
	var rb recorder
	if _, err := e.bus.Join(testCtx(t), "busy", &rb); err != nil {
		t.Fatal(err)
	}
	defer e.bus.Leave("busy", &rb)
	rb.waitSeq(t, "busy listener", e.publishEvent(t, "busy", []byte(`{}`)))

	// Direct gets now go to a responder that never answers.
	setDirect(t, e, false)
	asked := make(chan struct{}, 1)
	sub, err := e.agent.Subscribe("$JS.API.DIRECT.GET."+subjects.Stream, func(*nats.Msg) {
		select {
		case asked <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.agent.Flush(); err != nil {
		t.Fatal(err)
	}
	joined := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var ra recorder
		_, err := e.bus.Join(ctx, "slow", &ra)
		joined <- err
	}()
	select {
	case <-asked:
	case <-time.After(waitTimeout):
		t.Fatal("the position lookup was never sent")
	}
	e.publishEvent(t, "slow", []byte(`{}`)) // a live message of the thread being looked up
	began := time.Now()
	seq := e.publishEvent(t, "busy", []byte(`{}`))
	rb.waitSeq(t, "busy listener", seq)
	if took := time.Since(began); took > 1500*time.Millisecond {
		t.Errorf("an event of another thread waited %v for the slow lookup", took)
	}
	if err := <-joined; err == nil {
		t.Error("Join with a lookup nobody answers succeeded")
	}
}
