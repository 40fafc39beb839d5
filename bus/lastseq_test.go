package bus_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/subjects"
)

// TestJoinPositionsAtOnce: many threads joined at once share position
// lookups (more threads than one lookup answers), and each still gets its
// own thread's last event, whatever an agent put in its headers.
func TestJoinPositionsAtOnce(t *testing.T) {
	e := newEnv(t)
	const threads = 1500 // more than one multi-subject lookup returns
	js, err := jetstream.New(e.agent, jetstream.WithPublishAsyncMaxPending(4*threads))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]jetstream.PubAckFuture, threads)
	for k := range 3 {
		for i := range threads {
			if i%7 == 0 {
				continue // threads without events: position 0
			}
			out, _ := subjects.ThreadOut(fmt.Sprintf("pos_%d", i))
			m := nats.NewMsg(out)
			m.Data = fmt.Appendf(nil, `{"k":%d}`, k)
			if i%5 == 0 {
				// A forwarded message: its own headers name another
				// subject and sequence.
				m.Header.Set(jetstream.SubjectHeader, "thread.pos_1.out")
				m.Header.Set(jetstream.SequenceHeader, "1")
			}
			if want[i], err = js.PublishMsgAsync(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-js.PublishAsyncComplete()

	recs := make([]recorder, threads)
	got := make([]uint64, threads)
	errs := make([]error, threads)
	var wg sync.WaitGroup
	for i := range threads {
		wg.Go(func() { got[i], errs[i] = e.bus.Join(testCtx(t), fmt.Sprintf("pos_%d", i), &recs[i]) })
	}
	wg.Wait()
	for i := range threads {
		tid := fmt.Sprintf("pos_%d", i)
		defer e.bus.Leave(tid, &recs[i])
		var w uint64
		if want[i] != nil {
			select {
			case ack := <-want[i].Ok():
				w = ack.Sequence
			case err := <-want[i].Err():
				t.Fatal(err)
			}
		}
		if errs[i] != nil || got[i] != w {
			t.Errorf("Join(%s) = %d, %v; want its last event %d", tid, got[i], errs[i], w)
		}
	}
}
