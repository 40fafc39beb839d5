package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
)

func threadsCommand() *cli.Command {
	return group(&cli.Command{
		Name:        "threads",
		Usage:       "inspect conversation threads",
		Subcommands: []*cli.Command{threadsShowCommand()},
	})
}

func threadsShowCommand() *cli.Command {
	return leaf(&cli.Command{
		Name:      "show",
		Usage:     "what the stream holds for a thread, and who is bound to it now",
		UsageText: "threadbus threads show THREAD [--json]",
		Description: "Reads the thread's messages from the THREADS stream and the registry:\n" +
			"count, first and last seq, body bytes and last activity, for agent events\n" +
			"(out, thread.THREAD.out) and client frames (in, thread.THREAD.in) separately\n" +
			"and together, then the connections bound to the thread now. A thread with\n" +
			"nothing stored and nothing bound is an error.\n\n" +
			"Example:\n" +
			"  $ threadbus threads show demo\n" +
			"  thread demo: 5 messages stored, 1 connection bound\n\n" +
			"  DIRECTION     COUNT  FIRST SEQ  LAST SEQ  BYTES  LAST ACTIVITY\n" +
			"  out (events)  3      1          7         312    2026-05-01T10:00:03.210Z\n" +
			"  in (frames)   2      2          5         120    2026-05-01T10:00:02.004Z\n" +
			"  total         5      1          7         432    2026-05-01T10:00:03.210Z\n\n" +
			"  CONNECTION              THREAD  SIDECAR  USER  REMOTE           BOUND                     REPLAY\n" +
			"  kD3vJb0tWmfd4PLvXy1aBc  demo    web-1    -     127.0.0.1:51234  2026-05-01T10:00:00.123Z  after seq 0",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "one JSON object"},
			natsURLFlag(),
		},
	}, 1, 1, threadsShow)
}

// threadStats is what threads show reports; with --json, as is.
type threadStats struct {
	ThreadID string `json:"thread_id"`
	dirStats
	Out      dirStats      `json:"out"`
	In       dirStats      `json:"in"`
	Bindings []bus.Binding `json:"bindings"`
}

// dirStats sums up stored messages.
type dirStats struct {
	Count        uint64     `json:"count"`
	FirstSeq     uint64     `json:"first_seq,omitempty"`
	LastSeq      uint64     `json:"last_seq,omitempty"`
	Bytes        uint64     `json:"bytes"` // of the bodies
	LastActivity *time.Time `json:"last_activity,omitempty"`
}

func (d *dirStats) add(m storedMsg) {
	if d.Count == 0 {
		d.FirstSeq = m.Seq
	}
	d.Count++
	d.LastSeq = m.Seq
	d.Bytes += uint64(len(m.Data))
	if d.LastActivity == nil || m.Time.After(*d.LastActivity) {
		t := m.Time.UTC()
		d.LastActivity = &t
	}
}

func threadsShow(c *cli.Context, args []string) error {
	tid := args[0]
	if err := subjects.ValidateThreadID(tid); err != nil {
		return err
	}
	conn, err := connectNATS(c)
	if err != nil {
		return err
	}
	defer conn.close()
	ctx, cancel := context.WithTimeout(conn.ctx, time.Minute) // reads every message of the thread
	defer cancel()

	st := threadStats{ThreadID: tid}
	err = readThread(ctx, conn.js, tid, startAt{}, false, func(m storedMsg) error {
		st.dirStats.add(m)
		if m.Dir == dirIn {
			st.In.add(m)
		} else {
			st.Out.add(m)
		}
		return nil
	})
	if err != nil {
		return conn.ended(err)
	}
	st.Bindings, err = bus.ListBindings(ctx, conn.js, tid)
	if errors.Is(err, bus.ErrNoRegistry) {
		err = nil // no sidecar ever ran here with a registry: nothing bound
	}
	if err != nil {
		return conn.ended(explain(err))
	}
	if st.Count == 0 && len(st.Bindings) == 0 {
		return fmt.Errorf("unknown thread %s: nothing stored and no connection bound", tid)
	}
	if st.Bindings == nil {
		st.Bindings = []bus.Binding{}
	}
	if c.Bool("json") {
		return json.NewEncoder(c.App.Writer).Encode(st)
	}
	return writeThreadStats(c.App.Writer, st)
}

func writeThreadStats(w io.Writer, st threadStats) error {
	fmt.Fprintf(w, "thread %s: %s stored, %s bound\n\n", st.ThreadID,
		plural(st.Count, "message"), plural(uint64(len(st.Bindings)), "connection"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DIRECTION\tCOUNT\tFIRST SEQ\tLAST SEQ\tBYTES\tLAST ACTIVITY")
	for _, r := range []struct {
		name string
		d    dirStats
	}{{"out (events)", st.Out}, {"in (frames)", st.In}, {"total", st.dirStats}} {
		first, last, at := "-", "-", "-"
		if r.d.Count > 0 {
			first, last, at = fmt.Sprint(r.d.FirstSeq), fmt.Sprint(r.d.LastSeq), formatTime(*r.d.LastActivity)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", r.name, r.d.Count, first, last, r.d.Bytes, at)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Bindings) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	return writeBindings(w, st.Bindings)
}

func plural(n uint64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
