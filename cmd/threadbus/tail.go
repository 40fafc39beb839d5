package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/subjects"
)

func tailCommand() *cli.Command {
	return leaf(&cli.Command{
		Name:      "tail",
		Usage:     "print a thread's stored frames and events, both directions",
		UsageText: "threadbus tail THREAD [--since SEQ|DURATION|TIME] [--follow] [--json]",
		Description: "Prints the messages the THREADS stream holds for the thread, in stream order,\n" +
			"one line each: seq, time stored, direction, body. \"out\" are agent events\n" +
			"(thread.THREAD.out), \"in\" are client frames (thread.THREAD.in). Without\n" +
			"--follow it exits once it has printed what was stored; with --follow it keeps\n" +
			"printing new messages until interrupted.\n\n" +
			"--since 42 starts after seq 42, --since 5m with what was stored in the last\n" +
			"5 minutes, --since 2026-05-01T10:00:00Z from that time; by default, from the\n" +
			"oldest message kept. With --json, one object per line:\n" +
			"{\"seq\",\"time\",\"direction\",\"subject\",\"connection\",\"body\"}.\n\n" +
			"Example:\n" +
			"  $ threadbus tail demo --since 40\n" +
			"  41 2026-05-01T10:00:00.123Z in  {\"type\":\"user_message\",\"payload\":{\"content\":\"hi\",\"thread_id\":\"demo\"}}\n" +
			"  42 2026-05-01T10:00:00.456Z out {\"type\":\"agent_thinking\",\"payload\":{\"step_number\":1}}",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "since", Usage: "start after seq `SEQ`, or a DURATION ago (5m), or at a TIME (RFC 3339)"},
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new messages until interrupted"},
			&cli.BoolFlag{Name: "json", Usage: "one JSON object per line"},
			natsURLFlag(),
		},
	}, 1, 1, tail)
}

func tail(c *cli.Context, args []string) error {
	tid := args[0]
	if err := subjects.ValidateThreadID(tid); err != nil {
		return err
	}
	from, err := parseSince(c.String("since"), time.Now())
	if err != nil {
		return err
	}
	conn, err := connectNATS(c)
	if err != nil {
		return err
	}
	defer conn.close()
	w, asJSON := c.App.Writer, c.Bool("json")
	err = readThread(conn.ctx, conn.js, tid, from, c.Bool("follow"), func(m storedMsg) error {
		if asJSON {
			return writeJSONLines(w, []tailLine{m.line()})
		}
		_, err := fmt.Fprintf(w, "%d %s %-3s %s\n", m.Seq, formatTime(m.Time), m.Dir, oneLine(m.Data))
		return err
	})
	return conn.ended(err)
}

// Directions of a thread's messages.
const (
	dirOut = "out" // agent events, thread.<tid>.out
	dirIn  = "in"  // client frames, thread.<tid>.in
)

// storedMsg is one message of a thread as the stream stored it.
type storedMsg struct {
	Seq     uint64
	Time    time.Time
	Dir     string // dirOut or dirIn
	Subject string
	Conn    string // Threadbus-Conn of a client frame
	Data    []byte
}

// tailLine is a message as tail --json prints it.
type tailLine struct {
	Seq        uint64          `json:"seq"`
	Time       time.Time       `json:"time"`
	Direction  string          `json:"direction"`
	Subject    string          `json:"subject"`
	Connection string          `json:"connection,omitempty"`
	Body       json.RawMessage `json:"body"`
}

func (m storedMsg) line() tailLine {
	l := tailLine{Seq: m.Seq, Time: m.Time.UTC(), Direction: m.Dir, Subject: m.Subject, Connection: m.Conn}
	var buf bytes.Buffer
	if json.Compact(&buf, m.Data) == nil {
		l.Body = buf.Bytes()
	} else {
		l.Body, _ = json.Marshal(string(m.Data)) // not JSON: carried as a string
	}
	return l
}

// oneLine returns a body for one output line: JSON compacted, anything else quoted.
func oneLine(data []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, data) == nil {
		return buf.String()
	}
	return strconv.Quote(string(data))
}

// deleteTimeout bounds deleting the consumer of a read on the way out.
const deleteTimeout = 2 * time.Second

// startAt is where a read of a thread begins: after a sequence, or at a time.
type startAt struct {
	afterSeq uint64
	time     time.Time
}

// parseSince reads --since: a sequence (42: after it), a duration before now
// (5m) or an RFC 3339 time. Empty means from the first message kept.
func parseSince(s string, now time.Time) (startAt, error) {
	if s == "" {
		return startAt{}, nil
	}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		return startAt{afterSeq: n}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return startAt{time: now.Add(-d)}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return startAt{time: t}, nil
	}
	return startAt{}, fmt.Errorf("--since %q: want a sequence (42), a positive duration (5m) or a time (2026-05-01T10:00:00Z)", s)
}

func (s startAt) apply(cfg *jetstream.OrderedConsumerConfig) {
	switch {
	case !s.time.IsZero():
		t := s.time
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	case s.afterSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, s.afterSeq+1
	default:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
}

// readThread calls fn with the stored messages of thread tid, both
// directions, in stream order, from start on. Without follow it returns once
// fn has had every message stored when the read caught up; with follow it
// keeps going until ctx ends or fn fails. It reads through one ordered
// consumer, deleted when it returns (or by the server once inactive, if
// the process dies).
func readThread(ctx context.Context, js jetstream.JetStream, tid string, start startAt, follow bool, fn func(storedMsg) error) error {
	in, err := subjects.ThreadIn(tid)
	if err != nil {
		return err
	}
	out, err := subjects.ThreadOut(tid)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	s, err := threadsStream(sctx, js)
	if err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{out, in},
		InactiveThreshold: 15 * time.Second, // if this process dies
	}
	start.apply(&cfg)
	cons, err := s.OrderedConsumer(sctx, cfg)
	if err != nil {
		return fmt.Errorf("read thread %s: %w", tid, err)
	}

	// The handler runs on the client's delivery goroutine; mu keeps its
	// calls of fn from overlapping the return of readThread.
	var (
		mu      sync.Mutex
		stopped bool
		done    = make(chan error, 1)
		lastErr error
	)
	finish := func(err error) {
		stopped = true
		done <- err
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		meta, err := msg.Metadata()
		if err != nil {
			finish(fmt.Errorf("read thread %s: %w", tid, err))
			return
		}
		m := storedMsg{Seq: meta.Sequence.Stream, Time: meta.Timestamp, Dir: dirOut, Subject: msg.Subject(), Data: msg.Data()}
		if m.Subject == in {
			m.Dir, m.Conn = dirIn, msg.Headers().Get("Threadbus-Conn")
		}
		if err := fn(m); err != nil {
			finish(err)
			return
		}
		if !follow && meta.NumPending == 0 {
			finish(nil)
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		mu.Lock()
		lastErr = err // the ordered consumer recovers by itself; kept for the report
		mu.Unlock()
	}))
	if err != nil {
		return fmt.Errorf("read thread %s: %w", tid, err)
	}
	defer func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		cc.Stop()
		// Stop leaves the consumer on the server until it is inactive; a
		// stream allows 1,000 consumers, so do not leave one per run.
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
			_ = s.DeleteConsumer(dctx, info.Name)
			cancel()
		}
	}()
	if !follow {
		if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
			return nil // nothing stored from start on
		}
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-cc.Closed():
		mu.Lock()
		defer mu.Unlock()
		if stopped { // finished just now
			return <-done
		}
		return fmt.Errorf("read thread %s: stopped (%v)", tid, lastErr)
	}
}
