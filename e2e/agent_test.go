package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const streamName = "THREADS"

// agent is a NATS client that plays an agent or the legacy backend. It
// records the stream sequence JetStream acknowledged for every event it
// published, per thread, which is what clients must receive. Its methods
// are safe for concurrent use.
type agent struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu     sync.Mutex
	seqs   map[string][]uint64 // thread -> acked seqs, sorted
	bodies map[uint64][]byte   // seq -> published body
}

// newAgent connects to url; the connection is closed when the test ends.
func newAgent(t testing.TB, url string) *agent {
	t.Helper()
	nc, err := nats.Connect(url,
		nats.Name("threadbus-e2e-agent"),
		nats.Timeout(5*time.Second),
		nats.MaxReconnects(0),
	)
	if err != nil {
		t.Fatalf("agent: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &agent{nc: nc, js: js, seqs: map[string][]uint64{}, bodies: map[uint64][]byte{}}
}

// close closes the NATS connection (also done at cleanup).
func (a *agent) close() { a.nc.Close() }

// publish publishes body to thread.<tid>.out with a JetStream ack and
// records its seq.
func (a *agent) publish(ctx context.Context, tid string, body []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := a.js.Publish(ctx, "thread."+tid+".out", body)
	if err != nil {
		return 0, fmt.Errorf("agent: publish to thread %s: %w", tid, err)
	}
	a.record(tid, ack.Sequence, body)
	return ack.Sequence, nil
}

func (a *agent) record(tid string, seq uint64, body []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.seqs[tid]
	i, _ := slices.BinarySearch(s, seq)
	a.seqs[tid] = slices.Insert(s, i, seq)
	a.bodies[seq] = body
}

// mustPublish publishes n events to tid, one at a time, and returns their seqs.
func (a *agent) mustPublish(t testing.TB, tid string, n int) []uint64 {
	t.Helper()
	out := make([]uint64, 0, n)
	for range n {
		seq, err := a.publish(context.Background(), tid, a.event(tid, "agent_thinking", 0))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, seq)
	}
	return out
}

// publishAsync publishes bodies to tid without waiting for each ack and
// returns their seqs in publish order once every ack arrived.
func (a *agent) publishAsync(ctx context.Context, tid string, bodies [][]byte) ([]uint64, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(bodies))
	for _, b := range bodies {
		f, err := a.js.PublishAsync("thread."+tid+".out", b)
		if err != nil {
			return nil, fmt.Errorf("agent: async publish to thread %s: %w", tid, err)
		}
		futures = append(futures, f)
	}
	seqs := make([]uint64, 0, len(bodies))
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			a.record(tid, ack.Sequence, bodies[i])
			seqs = append(seqs, ack.Sequence)
		case err := <-f.Err():
			return nil, fmt.Errorf("agent: async publish %d to thread %s: %w", i, tid, err)
		case <-ctx.Done():
			return nil, fmt.Errorf("agent: async publish %d to thread %s: %w", i, tid, ctx.Err())
		}
	}
	return seqs, nil
}

// expected returns the acked seqs of tid in stream order.
func (a *agent) expected(tid string) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.seqs[tid])
}

// body returns what was published with seq.
func (a *agent) body(seq uint64) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bodies[seq]
}

// event builds an agent event the way the legacy agents did. pad adds that
// many bytes of reasoning text.
func (a *agent) event(tid, typ string, pad int) []byte {
	reasoning := "thinking about " + tid
	if pad > 0 {
		b := make([]byte, pad)
		for i := range b {
			b[i] = 'a' + byte(i%26)
		}
		reasoning = string(b)
	}
	ev := map[string]any{
		"type":       typ,
		"run_id":     "run-" + tid,
		"agent_name": "e2e",
		"timestamp":  time.Now().UTC().Format(time.RFC3339Nano),
		"payload":    map[string]any{"reasoning": reasoning, "step_number": 2},
	}
	b, err := json.Marshal(ev)
	if err != nil {
		panic(err)
	}
	return b
}

// stream returns the THREADS stream.
func (a *agent) stream(t testing.TB) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := a.js.Stream(ctx, streamName)
	if err != nil {
		t.Fatalf("agent: stream %s: %v", streamName, err)
	}
	return s
}

// lastMsg returns the last stored message on subject, or nil if there is none.
func (a *agent) lastMsg(t testing.TB, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := a.stream(t).GetLastMsgForSubject(ctx, subject)
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		t.Fatalf("agent: last message on %s: %v", subject, err)
	}
	return m
}

// countMsgs returns how many messages the stream holds on subject, which
// may have wildcards.
func (a *agent) countMsgs(t testing.TB, subject string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := a.stream(t).Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatalf("agent: stream info for %s: %v", subject, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// expectCount fails the test unless the stream comes to hold exactly want
// messages on subject within a few seconds (inbound frames are published
// asynchronously to the frames the client sees).
func (a *agent) expectCount(t testing.TB, subject string, want uint64, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n uint64
	if waitUntil(ctx, func() bool { n = a.countMsgs(t, subject); return n == want }) != nil {
		t.Errorf("%s holds %d messages, want %d: %s", subject, n, want, why)
	}
}

// storedAt returns when the stream stored seq.
func (a *agent) storedAt(ctx context.Context, seq uint64) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := a.js.Stream(ctx, streamName)
	if err != nil {
		return time.Time{}, fmt.Errorf("agent: stream %s: %w", streamName, err)
	}
	m, err := s.GetMsg(ctx, seq)
	if err != nil {
		return time.Time{}, fmt.Errorf("agent: get message %d: %w", seq, err)
	}
	return m.Time, nil
}

// checkInbound fails unless m is raw as sent by the connection cid, with the
// contract's headers.
func checkInbound(t testing.TB, m *nats.Msg, subject, raw, cid, sidecarID string) {
	t.Helper()
	if m.Subject != subject {
		t.Errorf("inbound frame on %q, want %q", m.Subject, subject)
	}
	if string(m.Data) != raw {
		t.Errorf("inbound frame on %s is %s, want it unchanged: %s", subject, m.Data, raw)
	}
	if got := m.Header.Get("Threadbus-Conn"); got != cid {
		t.Errorf("inbound frame on %s: header Threadbus-Conn = %q, want %q (headers %v)", subject, got, cid, m.Header)
	}
	if got := m.Header.Get("Threadbus-Sidecar"); got != sidecarID {
		t.Errorf("inbound frame on %s: header Threadbus-Sidecar = %q, want %q (headers %v)", subject, got, sidecarID, m.Header)
	}
}
