package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/subjects"
)

// Direct gets may be answered by any replica of the stream that allows
// them, and a follower answers with what it has applied, which may lag
// the leader: a replay or a gap repair read that way can end short of the
// feed position, and the events it misses would then be dropped on the
// live path as already delivered. Every read that must reach a sequence
// therefore checks that it did, and reads what a lagging replica lacked
// from the stream leader, one message per request (the leader's message
// get has no batches). That tail is a few messages when a follower lags by
// its apply delay; the bulk of every read stays a batched direct get.

// errNoMessage is the leader's answer when no message matches.
var errNoMessage = errors.New("no message")

// leaderMsg is the message of a leader's message-get reply.
type leaderMsg struct {
	Subject string    `json:"subject"`
	Seq     uint64    `json:"seq"`
	Data    []byte    `json:"data"`
	Time    time.Time `json:"time"`
}

// leaderNext returns the first message of subj with a sequence at or after
// seq (or, when at is set, stored at or after at), as the stream leader
// holds it, or errNoMessage.
func (b *Bus) leaderNext(ctx context.Context, subj string, seq uint64, at time.Time) (*leaderMsg, error) {
	r := struct {
		Seq   uint64     `json:"seq,omitempty"`
		Start *time.Time `json:"start_time,omitempty"`
		Next  string     `json:"next_by_subj"`
	}{Seq: seq, Next: subj}
	if !at.IsZero() {
		r.Seq, r.Start = 0, &at
	}
	req, _ := json.Marshal(r) // plain struct: always marshals
	ctx, cancel := context.WithTimeout(ctx, feedIOTimeout)
	defer cancel()
	resp, err := b.nc.RequestWithContext(ctx, subjects.StreamMsgGet, req)
	if err != nil {
		return nil, fmt.Errorf("leader get %s from %d: %w", subj, seq, err)
	}
	var reply struct {
		Message *leaderMsg `json:"message"`
		Error   *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &reply); err != nil {
		return nil, fmt.Errorf("leader get %s from %d: %w", subj, seq, err)
	}
	switch {
	case reply.Error != nil && reply.Error.Code == 404:
		return nil, errNoMessage
	case reply.Error != nil:
		return nil, fmt.Errorf("leader get %s from %d: %d %s", subj, seq, reply.Error.Code, reply.Error.Description)
	case reply.Message == nil:
		return nil, fmt.Errorf("leader get %s from %d: empty reply", subj, seq)
	}
	return reply.Message, nil
}

// readTail calls fn with the events of tid from start on, with a sequence
// up to through, read from the stream leader, until fn returns false.
// through 0 means every event stored from start on. It returns the
// sequence of the last event it gave fn (start.AfterSeq when none).
func (b *Bus) readTail(ctx context.Context, tid string, start Start, through uint64, fn func(Event) bool) (uint64, error) {
	subj, err := subjects.ThreadOut(tid)
	if err != nil {
		return start.AfterSeq, err
	}
	if through == 0 {
		through = math.MaxUint64
	}
	after, at := start.AfterSeq, start.Time
	for after < through {
		m, err := b.leaderNext(ctx, subj, after+1, at)
		at = time.Time{}
		if errors.Is(err, errNoMessage) {
			return after, nil
		}
		if err != nil {
			return after, err
		}
		if m.Seq > through {
			return after, nil
		}
		after = m.Seq
		if !fn(Event{Thread: tid, Seq: m.Seq, Time: m.Time, Frame: frame.Event(m.Data, tid, m.Seq)}) {
			return after, nil
		}
	}
	return after, nil
}
