package bus_test

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
)

// TestMain fails the package if a goroutine outlives the tests: every Bus,
// agent connection and embedded server is closed by its test's cleanups.
// Nothing is ignored: an embedded nats-server stopped with Shutdown and
// WaitForShutdown leaves no goroutine behind (checked on v2.15.2).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait on a condition; generous for -race on a
// loaded 2-core machine, and only ever reached when a test fails.
const waitTimeout = 15 * time.Second

// testEnv is an embedded nats-server with JetStream, a Bus opened on it, and
// a separate NATS connection that plays an agent (or, in the gap tests, the
// server's republish).
type testEnv struct {
	ns     *server.Server
	bus    *bus.Bus
	agent  *nats.Conn
	js     jetstream.JetStream // the agent's
	stream jetstream.Stream    // THREADS, seen by the agent
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	ns := startServer(t)
	e := &testEnv{ns: ns}
	e.bus = openBus(t, ns.ClientURL())
	e.agent, e.js = connectAgent(t, ns.ClientURL())
	var err error
	if e.stream, err = e.js.Stream(testCtx(t), subjects.Stream); err != nil {
		t.Fatalf("agent: stream %s: %v", subjects.Stream, err)
	}
	return e
}

func startServer(t *testing.T) *server.Server {
	t.Helper()
	ns, err := bus.StartServer(bus.ServerConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// openBus opens a Bus whose logs go to the test's output, and closes it when
// the test ends.
func openBus(t *testing.T, url string) *bus.Bus {
	t.Helper()
	b, err := bus.Open(testCtx(t), bus.Config{URL: url, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

func connectAgent(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("test-agent"))
	if err != nil {
		t.Fatalf("agent: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("agent: jetstream: %v", err)
	}
	return nc, js
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testCtx is the context of the test's calls: cancelled when the test ends.
// It has no deadline of its own: each call has one (JetStream requests and
// direct gets their client's default, Join its position lookup timeout).
func testCtx(t *testing.T) context.Context { return t.Context() }

// waitFor polls cond until it holds, and fails the test if it does not within
// waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// publishEvent stores an agent event on thread.<tid>.out from the agent's
// connection and returns its stream sequence.
func (e *testEnv) publishEvent(t *testing.T, tid string, data []byte) uint64 {
	t.Helper()
	subj, err := subjects.ThreadOut(tid)
	if err != nil {
		t.Fatalf("ThreadOut(%q): %v", tid, err)
	}
	ack, err := e.js.Publish(testCtx(t), subj, data)
	if err != nil {
		t.Fatalf("agent: publish to %s: %v", subj, err)
	}
	return ack.Sequence
}

// lastSeq is the stream's last sequence, whatever the subject.
func (e *testEnv) lastSeq(t *testing.T) uint64 {
	t.Helper()
	info, err := e.stream.Info(testCtx(t))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.LastSeq
}

// historySeqs reads the whole history of tid after seq `after` and returns
// the sequences in the order History yielded them.
func historySeqs(t *testing.T, b *bus.Bus, tid string, after uint64) []uint64 {
	t.Helper()
	var seqs []uint64
	err := b.History(testCtx(t), tid, bus.Start{AfterSeq: after}, func(ev bus.Event, _ uint64) bool {
		seqs = append(seqs, ev.Seq)
		return true
	})
	if err != nil {
		t.Fatalf("History(%s, after %d): %v", tid, after, err)
	}
	return seqs
}

// recorder is a Listener that keeps what it was given. Deliver runs with the
// feed locked, so it only appends under its own mutex.
type recorder struct {
	mu     sync.Mutex
	events []bus.Event
	failed []error
}

var _ bus.Listener = (*recorder)(nil)

func (r *recorder) Deliver(ev bus.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recorder) Fail(err error) {
	r.mu.Lock()
	r.failed = append(r.failed, err)
	r.mu.Unlock()
}

func (r *recorder) snapshot() ([]bus.Event, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events), slices.Clone(r.failed)
}

func (r *recorder) seqs() []uint64 {
	evs, _ := r.snapshot()
	seqs := make([]uint64, len(evs))
	for i, ev := range evs {
		seqs[i] = ev.Seq
	}
	return seqs
}

// has reports whether r was given seq, or failed (so that a wait ends and
// the test reports the failure instead of a timeout).
func (r *recorder) has(seq uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failed) > 0 {
		return true
	}
	for _, ev := range r.events {
		if ev.Seq == seq {
			return true
		}
	}
	return false
}

// waitSeq waits until r received seq and fails the test if r failed instead.
func (r *recorder) waitSeq(t *testing.T, name string, seq uint64) {
	t.Helper()
	waitFor(t, name+" to receive seq "+itoa(seq), func() bool { return r.has(seq) })
	if _, failed := r.snapshot(); len(failed) > 0 {
		t.Fatalf("%s failed: %v", name, failed)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// seqsAfter returns the elements of seqs greater than after.
func seqsAfter(seqs []uint64, after uint64) []uint64 {
	var out []uint64
	for _, s := range seqs {
		if s > after {
			out = append(out, s)
		}
	}
	return out
}
