package bus

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/threadbus/threadbus/subjects"
)

// Defaults of the THREADS stream's size limits. With them the stream holds
// at most 8 GiB (plus JetStream's index), whatever the retention: a client
// flooding frames pushes out the oldest messages instead of filling the
// disk. README "Limits" says how they were chosen.
const (
	DefaultMaxBytes          = 8 << 30
	DefaultMaxMsgsPerSubject = 10_000
)

// withStoreLimits sets the size limits of cfg on the stream configuration
// a sidecar creates THREADS with: zero means the default, negative no
// limit. Old messages are discarded first, so a resume past them is
// answered with recovered:false. An existing stream keeps its own limits
// (ensureStream).
func (c Config) withStoreLimits(sc jetstream.StreamConfig) jetstream.StreamConfig {
	sc.MaxBytes = storeLimit(c.MaxBytes, DefaultMaxBytes)
	sc.MaxMsgsPerSubject = storeLimit(c.MaxMsgsPerSubject, DefaultMaxMsgsPerSubject)
	sc.Discard = jetstream.DiscardOld
	return sc
}

func storeLimit(v, def int64) int64 {
	switch {
	case v == 0:
		return def
	case v < 0:
		return -1 // JetStream's "no limit"
	}
	return v
}

// ThreadTrimmed reports whether the per-subject message limit may have
// removed events of tid after since: the thread's events hold as many
// messages as the limit allows, and the oldest left is later than since+1.
// A removed message leaves no trace of its subject, so when other threads'
// messages lie between since and the oldest left, it answers true although
// nothing of tid may be lost: a client is told recovered:false, never the
// reverse.
// (The stream-wide limits drop the oldest messages of all threads, which
// the stream's first sequence shows; this one drops a thread's own.)
func (b *Bus) ThreadTrimmed(ctx context.Context, tid string, since uint64) (bool, error) {
	// The stream's own limit: an existing stream keeps the operator's
	// (see the stream-ownership rule in stream.go), whatever the flags say.
	limit := b.stream.CachedInfo().Config.MaxMsgsPerSubject
	if limit <= 0 {
		return false, nil
	}
	subj, err := subjects.ThreadOut(tid)
	if err != nil {
		return false, err
	}
	// One direct get of the thread's first message tells both its sequence
	// and, in Nats-Num-Pending, how many follow. A STREAM.INFO with a
	// subject filter per bind went through the JetStream API and cost a
	// 10,000-connection storm about a second.
	var first, count uint64
	_, _, err = b.historyBatch(ctx, tid, subj, 1, jetstreamext.GetBatchSeq(1), func(ev Event, pending uint64) bool {
		first, count = ev.Seq, 1+pending
		return false
	})
	if err != nil || count < uint64(limit) {
		return false, err // count 0: nothing stored, nothing left to miss
	}
	return first > since+1, nil
}
