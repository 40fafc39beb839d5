package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// historyBatch is how many messages one direct-get request asks for.
const historyBatch = 256

// Event is one stored thread.<tid>.out message, ready to deliver.
type Event struct {
	Thread string
	Seq    uint64
	Time   time.Time
	// Frame is the WebSocket frame for the event (see frame.Event). It may be
	// shared between listeners and must not be modified.
	Frame []byte
}

// Start says where a history read begins: after the sequence AfterSeq or,
// when Time is set, at the first event stored at or after Time.
type Start struct {
	AfterSeq uint64
	Time     time.Time
}

func (s Start) String() string {
	if !s.Time.IsZero() {
		return "time " + s.Time.UTC().Format(time.RFC3339Nano)
	}
	return "after seq " + strconv.FormatUint(s.AfterSeq, 10)
}

// History calls fn with the stored events of a thread from start on, in
// stream order, until fn returns false or the events stored when the read
// began are exhausted. pending is the number of matching events stored after
// ev when its batch was read: 1 + pending of the first event is how many a
// complete read of the thread yields.
func (b *Bus) History(ctx context.Context, tid string, start Start, fn func(ev Event, pending uint64) bool) error {
	subj, err := subjects.ThreadOut(tid)
	if err != nil {
		return err
	}
	from := jetstreamext.GetBatchSeq(start.AfterSeq + 1)
	if !start.Time.IsZero() {
		from = jetstreamext.GetBatchStartTime(start.Time)
	}
	for {
		last, more, err := b.historyBatch(ctx, tid, subj, historyBatch, from, fn)
		if err != nil || !more {
			return err
		}
		from = jetstreamext.GetBatchSeq(last + 1)
	}
}

// historyBatch reads one batch of History, of at most n events. more says
// whether the thread
// has events after last that fn wants.
func (b *Bus) historyBatch(ctx context.Context, tid, subj string, n int, from jetstreamext.GetBatchOpt, fn func(ev Event, pending uint64) bool) (last uint64, more bool, err error) {
	// Each batch has its own timeout: a replay paced by a slow client may
	// last much longer than any one read.
	ctx, cancel := context.WithTimeout(ctx, feedIOTimeout)
	defer cancel()
	msgs, err := jetstreamext.GetBatch(ctx, b.js, subjects.Stream, n, jetstreamext.GetBatchSubject(subj), from)
	if err != nil {
		return 0, false, fmt.Errorf("read history of %s: %w", subj, err)
	}
	n, pending := 0, uint64(0)
	for m, err := range msgs {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, fmt.Errorf("read history of %s: %w", subj, err)
		}
		n++
		seq, ts := streamSeqTime(m)
		last = seq
		pending = numPending(m)
		if !fn(Event{Thread: tid, Seq: seq, Time: ts, Frame: frame.Event(m.Data, tid, seq)}, pending) {
			return last, false, nil
		}
	}
	if n == 0 {
		// The stream answers a read with nothing to return with
		// ErrNoMessages (above). GetBatch ends without an error when no
		// reply came in time (natsext.RequestMany swallows timeouts),
		// which must not pass for a thread without events.
		if err := ctx.Err(); err != nil {
			return 0, false, fmt.Errorf("read history of %s: %w", subj, err)
		}
		return 0, false, fmt.Errorf("read history of %s: no reply from stream %s", subj, subjects.Stream)
	}
	return last, pending > 0, nil
}

func numPending(m *jetstream.RawStreamMsg) uint64 {
	n, _ := strconv.ParseUint(streamHeader(m.Header, "Nats-Num-Pending"), 10, 64)
	return n
}

// streamSeqTime returns the sequence and time the stream gave m. GetBatch
// reads the first value of each header, which is the publisher's own if it
// set one of the same name (see streamHeader).
func streamSeqTime(m *jetstream.RawStreamMsg) (uint64, time.Time) {
	seq, ts := m.Sequence, m.Time
	if s, err := strconv.ParseUint(streamHeader(m.Header, jetstream.SequenceHeader), 10, 64); err == nil {
		seq = s
	}
	if t, err := time.Parse(time.RFC3339Nano, streamHeader(m.Header, jetstream.TimeStampHeaer)); err == nil {
		ts = t
	}
	return seq, ts
}
