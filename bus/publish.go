package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/subjects"
)

// PublishThreadIn stores a client frame on thread.<tid>.in and returns its
// stream sequence once JetStream acknowledged it.
func (b *Bus) PublishThreadIn(ctx context.Context, tid string, hdr nats.Header, data []byte) (uint64, error) {
	subj, err := subjects.ThreadIn(tid)
	if err != nil {
		return 0, err
	}
	ack, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: hdr, Data: data})
	if err != nil {
		return 0, fmt.Errorf("publish to %s: %w", subj, err)
	}
	return ack.Sequence, nil
}

// PublishConnIn publishes a frame of an unbound connection on conn.<cid>.in.
// It is core NATS: not stored, not acknowledged.
func (b *Bus) PublishConnIn(cid string, hdr nats.Header, data []byte) error {
	subj, err := subjects.ConnIn(cid)
	if err != nil {
		return err
	}
	if err := b.nc.PublishMsg(&nats.Msg{Subject: subj, Header: hdr, Data: data}); err != nil {
		return fmt.Errorf("publish to %s: %w", subj, err)
	}
	return nil
}

// PublishEvent stores an agent event on thread.<tid>.out, as an agent would,
// and returns its stream sequence.
func (b *Bus) PublishEvent(ctx context.Context, tid string, data []byte) (uint64, error) {
	subj, err := subjects.ThreadOut(tid)
	if err != nil {
		return 0, err
	}
	ack, err := b.js.Publish(ctx, subj, data)
	if err != nil {
		return 0, fmt.Errorf("publish to %s: %w", subj, err)
	}
	return ack.Sequence, nil
}
