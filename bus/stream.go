package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/subjects"
)

// DefaultRetention is how long the stream keeps frames and events by default.
const DefaultRetention = 24 * time.Hour

// StreamConfig returns the THREADS stream configuration a sidecar creates
// the stream with: both directions of every thread, kept for retention,
// direct gets allowed (history and gap repair), and thread.*.out republished
// to the live subjects.
func StreamConfig(retention time.Duration, replicas int) jetstream.StreamConfig {
	if retention <= 0 {
		retention = DefaultRetention
	}
	if replicas <= 0 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:        subjects.Stream,
		Description: "threadbus: client frames (thread.*.in) and agent events (thread.*.out)",
		Subjects:    []string{subjects.ThreadInAll, subjects.ThreadOutAll},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      retention,
		Replicas:    replicas,
		AllowDirect: true,
		RePublish: &jetstream.RePublish{
			Source:      subjects.ThreadOutAll,
			Destination: subjects.LiveRepublishDest,
		},
	}
}

// The stream-ownership rule. A stream that threadbus uses (THREADS, and the
// bindings bucket's stream) is created by the first sidecar that finds it
// missing, sized by that sidecar's flags. Once it exists, its size is the
// operator's: replicas, retention (MaxAge), storage, limits (MaxBytes,
// MaxMsgs, MaxMsgsPerSubject, MaxMsgSize, discard policy) are never changed
// by a sidecar, whatever its flags say; a sidecar whose flags differ logs
// what it keeps. What threadbus needs in order to work is checked: what is
// missing and can be added is added (a subject, the live RePublish, direct
// gets, per-message TTLs and their markers on the bucket), and what
// contradicts it (another RePublish, a retention policy other than limits,
// a mirror, a sealed stream, no acks) stops the sidecar with an error that
// names each difference. Sidecars with different flags therefore never
// undo each other's changes: they only ever add the same things.

// ensureStream returns the stream named by want, created with want if it
// is missing, or made usable under the ownership rule if it exists.
func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, log *slog.Logger) (jetstream.Stream, error) {
	for {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			s, err = js.CreateStream(ctx, want)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				continue // another sidecar created it first: check theirs
			}
			if err != nil {
				return nil, fmt.Errorf("create stream %s: %w", want.Name, err)
			}
			log.Info("stream created", "stream", want.Name, "replicas", want.Replicas, "max_age", want.MaxAge)
			return s, nil
		}
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", want.Name, err)
		}
		have := s.CachedInfo().Config
		next, added, kept, err := reconcileStream(have, want)
		if err != nil {
			return nil, err
		}
		for _, k := range kept {
			log.Info("stream keeps the operator's setting", "stream", want.Name, "setting", k)
		}
		if len(added) == 0 {
			return s, nil
		}
		if s, err = js.UpdateStream(ctx, next); err != nil {
			return nil, fmt.Errorf("stream %s: add %s: %w", want.Name, strings.Join(added, ", "), err)
		}
		log.Warn("stream updated with what threadbus needs", "stream", want.Name, "added", strings.Join(added, ", "))
		return s, nil
	}
}

// reconcileStream applies the ownership rule to an existing stream's config
// have, given the config want a sidecar would create it with. It returns
// the config to update the stream to, what it adds (none: leave it as it
// is), the sizing settings it keeps although want differs, or an error
// wrapping ErrStreamConflict that names everything that contradicts want.
func reconcileStream(have, want jetstream.StreamConfig) (next jetstream.StreamConfig, added, kept []string, err error) {
	next = have
	next.Subjects = slices.Clone(have.Subjects)
	var conflicts []string
	if have.Retention != want.Retention {
		conflicts = append(conflicts, fmt.Sprintf("retention policy is %s, threadbus needs %s", have.Retention, want.Retention))
	}
	if have.Mirror != nil {
		conflicts = append(conflicts, "the stream is a mirror, which takes no publishes")
	}
	if have.Sealed {
		conflicts = append(conflicts, "the stream is sealed")
	}
	if have.NoAck {
		conflicts = append(conflicts, "the stream does not acknowledge publishes (no_ack)")
	}
	switch {
	case have.RePublish == nil && want.RePublish != nil:
		rp := *want.RePublish
		next.RePublish = &rp
		added = append(added, "republish "+rp.Source+" to "+rp.Destination)
	case want.RePublish != nil && *have.RePublish != *want.RePublish:
		conflicts = append(conflicts, fmt.Sprintf("republish is %s to %s (headers only %v), threadbus needs %s to %s with bodies",
			have.RePublish.Source, have.RePublish.Destination, have.RePublish.HeadersOnly,
			want.RePublish.Source, want.RePublish.Destination))
	}
	for _, subj := range want.Subjects {
		if !slices.ContainsFunc(have.Subjects, func(p string) bool { return subjectCovers(p, subj) }) {
			next.Subjects = append(next.Subjects, subj)
			added = append(added, "subject "+subj)
		}
	}
	if want.AllowDirect && !have.AllowDirect {
		next.AllowDirect = true
		added = append(added, "direct gets")
	}
	if want.AllowMsgTTL && !have.AllowMsgTTL {
		next.AllowMsgTTL = true
		added = append(added, "per-message TTLs")
	}
	if want.SubjectDeleteMarkerTTL > 0 && have.SubjectDeleteMarkerTTL <= 0 {
		next.SubjectDeleteMarkerTTL = want.SubjectDeleteMarkerTTL
		added = append(added, "delete markers kept "+want.SubjectDeleteMarkerTTL.String())
	}
	if len(conflicts) > 0 {
		return have, nil, nil, fmt.Errorf("%w: stream %s: %s", ErrStreamConflict, have.Name, strings.Join(conflicts, "; "))
	}
	if have.Replicas != want.Replicas {
		kept = append(kept, fmt.Sprintf("replicas %d (this sidecar would create %d)", have.Replicas, want.Replicas))
	}
	if have.MaxAge != want.MaxAge {
		kept = append(kept, fmt.Sprintf("max age %s (this sidecar would create %s)", maxAgeString(have.MaxAge), maxAgeString(want.MaxAge)))
	}
	for _, l := range []struct {
		name       string
		have, want int64
	}{
		{"max bytes", have.MaxBytes, want.MaxBytes},
		{"max messages", have.MaxMsgs, want.MaxMsgs},
		{"max messages per subject", have.MaxMsgsPerSubject, want.MaxMsgsPerSubject},
		{"max message size", int64(have.MaxMsgSize), int64(want.MaxMsgSize)},
	} {
		if limitOf(l.have) != limitOf(l.want) {
			kept = append(kept, fmt.Sprintf("%s %s (this sidecar would create %s)", l.name, limitString(l.have), limitString(l.want)))
		}
	}
	if have.Storage != want.Storage {
		kept = append(kept, fmt.Sprintf("storage %s (this sidecar would create %s)", have.Storage, want.Storage))
	}
	return next, added, kept, nil
}

// subjectCovers reports whether the subject filter pattern matches every
// subject subj matches (subj may hold wildcards itself).
func subjectCovers(pattern, subj string) bool {
	pt, st := strings.Split(pattern, "."), strings.Split(subj, ".")
	for i, p := range pt {
		if p == ">" {
			return i < len(st)
		}
		if i >= len(st) {
			return false
		}
		switch {
		case st[i] == ">":
			return false
		case p == "*":
		case p != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

// limitOf maps the "no limit" values (0 and -1) to one.
func limitOf(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

func limitString(n int64) string {
	if n <= 0 {
		return "none"
	}
	return strconv.FormatInt(n, 10)
}

func maxAgeString(d time.Duration) string {
	if d <= 0 {
		return "unlimited"
	}
	return d.String()
}

// epochOf names one incarnation of the stream: sequences restart when the
// stream is deleted and created again, and so does its creation time.
func epochOf(info *jetstream.StreamInfo) string {
	return strconv.FormatInt(info.Created.UnixNano(), 36)
}

// ensureBucket returns the KV bucket cfg names, created with cfg if it is
// missing. An existing bucket is kept as its operator sized it; per-message
// TTLs and their delete markers, which the registry's expiry needs, are
// added if it lacks them (see the ownership rule above).
func ensureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, log *slog.Logger) (jetstream.KeyValue, error) {
	for {
		kv, err := js.KeyValue(ctx, cfg.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = js.CreateKeyValue(ctx, cfg)
			if errors.Is(err, jetstream.ErrBucketExists) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("create bucket %s: %w", cfg.Bucket, err)
			}
			log.Info("bucket created", "bucket", cfg.Bucket, "replicas", cfg.Replicas)
			return kv, nil
		}
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
		name := "KV_" + cfg.Bucket
		s, err := js.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("bucket %s: stream %s: %w", cfg.Bucket, name, err)
		}
		have := s.CachedInfo().Config
		want := have
		want.AllowMsgTTL = true
		want.SubjectDeleteMarkerTTL = cfg.LimitMarkerTTL
		next, added, _, err := reconcileStream(have, want)
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
		if have.Replicas != cfg.Replicas {
			log.Info("bucket keeps the operator's setting", "bucket", cfg.Bucket,
				"setting", fmt.Sprintf("replicas %d (this sidecar would create %d)", have.Replicas, cfg.Replicas))
		}
		if len(added) > 0 {
			if _, err := js.UpdateStream(ctx, next); err != nil {
				return nil, fmt.Errorf("bucket %s: add %s: %w", cfg.Bucket, strings.Join(added, ", "), err)
			}
			log.Warn("bucket updated with what threadbus needs", "bucket", cfg.Bucket, "added", strings.Join(added, ", "))
		}
		return kv, nil
	}
}
