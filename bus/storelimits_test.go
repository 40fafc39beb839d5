package bus_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/bus"
)

func TestStoreLimitsDefaults(t *testing.T) {
	e := newEnv(t)
	info, err := e.stream.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	c := info.Config
	if c.MaxBytes != bus.DefaultMaxBytes || c.MaxMsgsPerSubject != bus.DefaultMaxMsgsPerSubject || c.Discard != jetstream.DiscardOld {
		t.Errorf("stream limits: max bytes %d, per subject %d, discard %v; want %d, %d, old",
			c.MaxBytes, c.MaxMsgsPerSubject, c.Discard, int64(bus.DefaultMaxBytes), bus.DefaultMaxMsgsPerSubject)
	}
}

// TestThreadTrimmed: a thread over its per-subject limit loses its oldest
// events, and a resume from before what is left is not recovered.
func TestThreadTrimmed(t *testing.T) {
	ns := startServer(t)
	b, err := bus.Open(testCtx(t), bus.Config{URL: ns.ClientURL(), MaxMsgsPerSubject: 3, MaxBytes: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	_, js := connectAgent(t, ns.ClientURL())
	s, err := js.Stream(testCtx(t), "THREADS")
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Info(testCtx(t)); info.Config.MaxBytes != -1 || info.Config.MaxMsgsPerSubject != 3 {
		t.Fatalf("stream limits %d, %d; want -1, 3", info.Config.MaxBytes, info.Config.MaxMsgsPerSubject)
	}
	var seqs []uint64
	for range 5 {
		seq, err := b.PublishEvent(testCtx(t), "t1", []byte(`{"type":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
		if _, err := b.PublishEvent(testCtx(t), "t2", []byte(`{"type":"y"}`)); err != nil {
			t.Fatal(err)
		}
	}
	// t1 keeps its last 3 events, seqs[2:]. From seqs[1], nothing of t1 was
	// lost, but the stream cannot tell: the sequence between is t2's, and a
	// removed message leaves no trace of its subject. Trimmed errs on the
	// side of recovered:false.
	for _, tt := range []struct {
		since uint64
		want  bool
	}{{0, true}, {seqs[0], true}, {seqs[1], true}, {seqs[2], false}, {seqs[3], false}, {seqs[4], false}} {
		got, err := b.ThreadTrimmed(testCtx(t), "t1", tt.since)
		if err != nil || got != tt.want {
			t.Errorf("ThreadTrimmed(t1, since %d) = %v, %v; want %v", tt.since, got, err, tt.want)
		}
	}
	if got, err := b.ThreadTrimmed(testCtx(t), "t3", 0); err != nil || got {
		t.Errorf("ThreadTrimmed of an empty thread = %v, %v", got, err)
	}
	// Under its limit a thread lost nothing, although its first event comes
	// long after since.
	for range 2 {
		if _, err := b.PublishEvent(testCtx(t), "t4", []byte(`{"type":"z"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := b.ThreadTrimmed(testCtx(t), "t4", 0); err != nil || got {
		t.Errorf("ThreadTrimmed of a thread under its limit = %v, %v; want false", got, err)
	}
}
