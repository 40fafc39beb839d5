package bus_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
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
// same epoch, stored events kept, and the stream's retention kept although
// the third asks for another (the ownership rule: sidecars never fight).
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
	checkStreamConfig(t, info.Config, bus.DefaultRetention)
	if info.State.Msgs != 1 {
		t.Errorf("stream holds %d messages after reopening, want 1", info.State.Msgs)
	}
}

// TestOpenKeepsOperatorStream: on a stream an operator made, Open adds
// only what threadbus lacks (a subject, the republish, direct gets) and
// keeps the operator's retention and limits, lower or higher than its own.
func TestOpenKeepsOperatorStream(t *testing.T) {
	ns := startServer(t)
	_, js := connectAgent(t, ns.ClientURL())
	op := jetstream.StreamConfig{
		Name:              subjects.Stream,
		Subjects:          []string{"thread.*.out"},
		Storage:           jetstream.FileStorage,
		MaxAge:            48 * time.Hour,
		MaxBytes:          1 << 20,
		MaxMsgsPerSubject: 500,
	}
	if _, err := js.CreateStream(testCtx(t), op); err != nil {
		t.Fatalf("operator: create stream: %v", err)
	}
	for _, retention := range []time.Duration{time.Hour, 72 * time.Hour} {
		b, err := bus.Open(testCtx(t), bus.Config{URL: ns.ClientURL(), Retention: retention, Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("Open with retention %v: %v", retention, err)
		}
		_ = b.Close(testCtx(t))
		s, err := js.Stream(testCtx(t), subjects.Stream)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		cfg := s.CachedInfo().Config
		checkStreamConfig(t, cfg, 48*time.Hour)
		if cfg.MaxBytes != op.MaxBytes || cfg.MaxMsgsPerSubject != op.MaxMsgsPerSubject {
			t.Errorf("after Open with retention %v: max bytes %d, per subject %d; the operator set %d, %d",
				retention, cfg.MaxBytes, cfg.MaxMsgsPerSubject, op.MaxBytes, op.MaxMsgsPerSubject)
		}
	}
}

// TestOpenRefusesConflictingStream: a stream that contradicts what
// threadbus needs is left alone and Open says what differs.
func TestOpenRefusesConflictingStream(t *testing.T) {
	ns := startServer(t)
	_, js := connectAgent(t, ns.ClientURL())
	op := jetstream.StreamConfig{
		Name:      subjects.Stream,
		Subjects:  []string{"thread.*.out", "thread.*.in"},
		Retention: jetstream.InterestPolicy,
		RePublish: &jetstream.RePublish{Source: "thread.*.out", Destination: "elsewhere.{{wildcard(1)}}"},
	}
	if _, err := js.CreateStream(testCtx(t), op); err != nil {
		t.Fatalf("operator: create stream: %v", err)
	}
	b, err := bus.Open(testCtx(t), bus.Config{URL: ns.ClientURL(), Logger: testLogger(t)})
	if err == nil {
		_ = b.Close(testCtx(t))
		t.Fatal("Open on a conflicting stream: no error")
	}
	if !errors.Is(err, bus.ErrStreamConflict) {
		t.Errorf("Open: %v, want ErrStreamConflict", err)
	}
	for _, want := range []string{"retention policy", "elsewhere.{{wildcard(1)}}"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open's error %q does not name %q", err, want)
		}
	}
	s, err := js.Stream(testCtx(t), subjects.Stream)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if cfg := s.CachedInfo().Config; cfg.AllowDirect || cfg.RePublish.Destination != op.RePublish.Destination {
		t.Errorf("Open changed a stream it refused: %+v", cfg)
	}
}

// TestOpenAddsBucketMarkers: a bindings bucket made without per-message
// TTLs gets them (registry expiry needs them); its replicas stay.
func TestOpenAddsBucketMarkers(t *testing.T) {
	ns := startServer(t)
	_, js := connectAgent(t, ns.ClientURL())
	if _, err := js.CreateKeyValue(testCtx(t), jetstream.KeyValueConfig{Bucket: bus.BindingsBucket, History: 5}); err != nil {
		t.Fatalf("operator: create bucket: %v", err)
	}
	openBus(t, ns.ClientURL())
	s, err := js.Stream(testCtx(t), "KV_"+bus.BindingsBucket)
	if err != nil {
		t.Fatalf("bucket stream: %v", err)
	}
	cfg := s.CachedInfo().Config
	if !cfg.AllowMsgTTL || cfg.SubjectDeleteMarkerTTL != bus.DefaultRegistryTTL {
		t.Errorf("bucket: allow msg ttl %v, marker ttl %v; want true, %v", cfg.AllowMsgTTL, cfg.SubjectDeleteMarkerTTL, bus.DefaultRegistryTTL)
	}
	if cfg.MaxMsgsPerSubject != 5 {
		t.Errorf("bucket history %d, the operator set 5", cfg.MaxMsgsPerSubject)
	}
}

func TestReconcileStream(t *testing.T) {
	want := bus.StreamConfig(time.Hour, 1)
	have := want
	have.Replicas, have.MaxAge, have.MaxBytes = 3, 0, 1<<30
	have.Subjects = []string{"thread.>"}
	next, added, kept, err := bus.ReconcileStream(have, want)
	if err != nil || len(added) != 0 {
		t.Fatalf("R3 stream with thread.>: added %q, err %v; want nothing to add", added, err)
	}
	if next.Replicas != 3 || next.MaxAge != 0 || next.MaxBytes != 1<<30 {
		t.Errorf("next = replicas %d, max age %v, max bytes %d: the operator's values changed", next.Replicas, next.MaxAge, next.MaxBytes)
	}
	if len(kept) != 3 {
		t.Errorf("kept = %q, want replicas, max age and max bytes named", kept)
	}
	have = want
	have.RePublish = nil
	have.AllowDirect = false
	if _, added, _, err = bus.ReconcileStream(have, want); err != nil || len(added) != 2 {
		t.Errorf("stream without republish and direct gets: added %q, err %v", added, err)
	}
	have = want
	have.RePublish = &jetstream.RePublish{Source: "thread.*.out", Destination: subjects.LiveRepublishDest, HeadersOnly: true}
	have.Sealed = true
	if _, _, _, err = bus.ReconcileStream(have, want); !errors.Is(err, bus.ErrStreamConflict) ||
		!strings.Contains(err.Error(), "sealed") || !strings.Contains(err.Error(), "headers only true") {
		t.Errorf("sealed, headers-only republish: err %v, want a conflict naming both", err)
	}
}

func TestSubjectCovers(t *testing.T) {
	for _, c := range []struct {
		pattern, subj string
		want          bool
	}{
		{"thread.*.out", "thread.*.out", true},
		{"thread.>", "thread.*.out", true},
		{">", "thread.*.in", true},
		{"thread.*.*", "thread.*.in", true},
		{"thread.a.out", "thread.*.out", false},
		{"thread.*", "thread.*.out", false},
		{"thread.*.out.x", "thread.*.out", false},
		{"thread.*.>", "thread.>", false},
	} {
		if got := bus.SubjectCovers(c.pattern, c.subj); got != c.want {
			t.Errorf("subjectCovers(%q, %q) = %v, want %v", c.pattern, c.subj, got, c.want)
		}
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

// TestClusterServerName: a clustered embedded server is named after its
// cluster address, and by host name when that address is unspecified, so
// nodes that all listen on 0.0.0.0 get distinct names.
func TestClusterServerName(t *testing.T) {
	hn, err := os.Hostname()
	if err != nil {
		t.Skip("no host name on this machine:", err)
	}
	want := "threadbus-" + strings.NewReplacer(".", "-", ":", "-").Replace(hn) + "-6222"
	for _, c := range []struct {
		host string
		want string
	}{
		{"127.0.0.1", "threadbus-127-0-0-1-6222"},
		{"::1", "threadbus---1-6222"},
		{"0.0.0.0", want},
		{"::", want},
		{"", want},
	} {
		got, err := bus.ClusterServerName(c.host, 6222)
		if err != nil || got != c.want {
			t.Errorf("ClusterServerName(%q, 6222) = %q, %v; want %q", c.host, got, err, c.want)
		}
	}
}
