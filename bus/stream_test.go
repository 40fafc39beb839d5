package bus_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
)

func TestStreamConfigDefaults(t *testing.T) {
	cfg := bus.StreamConfig(0, 0)
	if cfg.Name != "THREADS" {
		t.Errorf("Name = %q, want THREADS", cfg.Name)
	}
	if cfg.MaxAge != bus.DefaultRetention || bus.DefaultRetention != 24*time.Hour {
		t.Errorf("MaxAge = %v (DefaultRetention %v), want 24h", cfg.MaxAge, bus.DefaultRetention)
	}
	if cfg.Replicas != 1 {
		t.Errorf("Replicas = %d, want 1", cfg.Replicas)
	}
	cfg = bus.StreamConfig(time.Hour, 3)
	if cfg.MaxAge != time.Hour || cfg.Replicas != 3 {
		t.Errorf("StreamConfig(1h, 3): MaxAge %v, Replicas %d", cfg.MaxAge, cfg.Replicas)
	}
}

// TestOpenCreatesStream checks the stream as the server holds it, read from
// another connection: what agents and other sidecars rely on.
func TestOpenCreatesStream(t *testing.T) {
	e := newEnv(t)
	info, err := e.stream.Info(testCtx(t))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	checkStreamConfig(t, info.Config, bus.DefaultRetention)
	if e.bus.Epoch() == "" {
		t.Error("Epoch is empty")
	}
	if err := e.bus.Ready(testCtx(t)); err != nil {
		t.Errorf("Ready: %v", err)
	}
	first, last, err := e.bus.StreamBounds(testCtx(t))
	if err != nil || first != 0 || last != 0 {
		t.Errorf("StreamBounds of an empty stream = %d, %d, %v; want 0, 0, nil", first, last, err)
	}
}

func checkStreamConfig(t *testing.T, cfg jetstream.StreamConfig, maxAge time.Duration) {
	t.Helper()
	if cfg.Name != subjects.Stream {
		t.Errorf("stream name %q, want %q", cfg.Name, subjects.Stream)
	}
	got := slices.Sorted(slices.Values(cfg.Subjects))
	if want := []string{"thread.*.in", "thread.*.out"}; !slices.Equal(got, want) {
		t.Errorf("stream subjects %q, want %q", got, want)
	}
	if !cfg.AllowDirect {
		t.Error("AllowDirect is off: History and gap repair need direct gets")
	}
	if cfg.RePublish == nil {
		t.Fatal("no RePublish: the live path needs it")
	}
	if cfg.RePublish.Source != "thread.*.out" || cfg.RePublish.Destination != "threadbus.live.{{wildcard(1)}}" || cfg.RePublish.HeadersOnly {
		t.Errorf("RePublish = %+v, want thread.*.out -> threadbus.live.{{wildcard(1)}} with bodies", *cfg.RePublish)
	}
	if cfg.MaxAge != maxAge {
		t.Errorf("MaxAge = %v, want %v", cfg.MaxAge, maxAge)
	}
	if cfg.Storage != jetstream.FileStorage || cfg.Retention != jetstream.LimitsPolicy {
		t.Errorf("storage %v retention %v, want file and limits", cfg.Storage, cfg.Retention)
	}
}

// TestOpenIdempotent opens a second and a third Bus on a stream that exists:
// same epoch, stored events kept, and a changed retention applied.
func TestOpenIdempotent(t *testing.T) {
	e := newEnv(t)
	seq := e.publishEvent(t, "t1", []byte(`{"type":"agent_started"}`))

	b2 := openBus(t, e.ns.ClientURL())
	if b2.Epoch() != e.bus.Epoch() {
		t.Errorf("second Open: epoch %q, first %q", b2.Epoch(), e.bus.Epoch())
	}
	if got := historySeqs(t, b2, "t1", 0); !slices.Equal(got, []uint64{seq}) {
		t.Errorf("history after second Open = %v, want [%d]", got, seq)
	}

	b3, err := bus.Open(testCtx(t), bus.Config{URL: e.ns.ClientURL(), Retention: time.Hour, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("third Open with 1h retention: %v", err)
	}
	t.Cleanup(func() { _ = b3.Close(context.Background()) })
	if b3.Epoch() != e.bus.Epoch() {
		t.Errorf("third Open: epoch %q, first %q", b3.Epoch(), e.bus.Epoch())
	}
	info, err := e.stream.Info(testCtx(t))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	checkStreamConfig(t, info.Config, time.Hour)
	if info.State.Msgs != 1 {
		t.Errorf("stream holds %d messages after reopening, want 1", info.State.Msgs)
	}
}

// TestEpochChangesWithStream: sequences of a recreated stream are not
// comparable with the old ones, and the epoch says so.
func TestEpochChangesWithStream(t *testing.T) {
	e := newEnv(t)
	old := e.bus.Epoch()
	if err := e.js.DeleteStream(testCtx(t), subjects.Stream); err != nil {
		t.Fatalf("delete stream: %v", err)
	}
	b2 := openBus(t, e.ns.ClientURL())
	if b2.Epoch() == "" || b2.Epoch() == old {
		t.Errorf("epoch after recreating the stream = %q, before %q: want a different one", b2.Epoch(), old)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := bus.Open(t.Context(), bus.Config{}); err == nil {
		t.Error("Open without URL: no error")
	}
	// Port 1 on loopback: nothing listens there; the connection is refused
	// at once.
	if b, err := bus.Open(t.Context(), bus.Config{URL: "nats://127.0.0.1:1", Logger: testLogger(t)}); err == nil {
		_ = b.Close(t.Context())
		t.Error("Open of an unreachable server: no error")
	}
}
