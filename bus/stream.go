package bus

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/subjects"
)

// DefaultRetention is how long the stream keeps frames and events by default.
const DefaultRetention = 24 * time.Hour

// StreamConfig returns the THREADS stream configuration: both directions of
// every thread, kept for retention, direct gets allowed (history and gap
// repair), and thread.*.out republished to the live subjects.
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

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// epochOf names one incarnation of the stream: sequences restart when the
// stream is deleted and created again, and so does its creation time.
func epochOf(info *jetstream.StreamInfo) string {
	return strconv.FormatInt(info.Created.UnixNano(), 36)
}
