package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
)

func bindingsCommand() *cli.Command {
	return group(&cli.Command{
		Name:  "bindings",
		Usage: "inspect the registry of connections bound to threads",
		Description: "Every sidecar records its bound connections in the JetStream KV bucket\n" +
			bus.BindingsBucket + "; these commands read it, across every sidecar on the same NATS.",
		Subcommands: []*cli.Command{bindingsLsCommand(), bindingsWatchCommand()},
	})
}

func bindingsLsCommand() *cli.Command {
	return leaf(&cli.Command{
		Name:      "ls",
		Usage:     "list the connections bound now",
		UsageText: "threadbus bindings ls [--thread THREAD] [--sidecar SIDECAR] [--user USER] [--json]",
		Description: "Lists every binding in the registry, sorted by thread then bind time, as a\n" +
			"table, or one JSON object per line with --json. BOUND is when the connection\n" +
			"was bound, REPLAY where its replay began, USER the verified user (serve --auth jwt).\n\n" +
			"Example:\n" +
			"  $ threadbus bindings ls --thread demo\n" +
			"  CONNECTION              THREAD  SIDECAR  USER  REMOTE           BOUND                     REPLAY\n" +
			"  kD3vJb0tWmfd4PLvXy1aBc  demo    web-1    -     127.0.0.1:51234  2026-05-01T10:00:00.123Z  after seq 41",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "thread", Usage: "only the bindings of thread `THREAD`"},
			&cli.StringFlag{Name: "sidecar", Usage: "only the bindings of the sidecar with id `SIDECAR` (serve --sidecar-id)"},
			&cli.StringFlag{Name: "user", Usage: "only the bindings of the verified user `USER`"},
			&cli.BoolFlag{Name: "json", Usage: "one JSON object per line"},
			natsURLFlag(),
		},
	}, 0, 0, bindingsLs)
}

func bindingsLs(c *cli.Context, _ []string) error {
	tid, err := threadFlag(c)
	if err != nil {
		return err
	}
	conn, err := connectNATS(c)
	if err != nil {
		return err
	}
	defer conn.close()
	ctx, cancel := conn.withTimeout()
	defer cancel()
	all, err := bus.ListBindings(ctx, conn.js, tid)
	if err != nil {
		return explain(err)
	}
	var bs []bus.Binding
	sc, user := c.String("sidecar"), c.String("user")
	for _, b := range all {
		if (sc == "" || b.SidecarID == sc) && (user == "" || b.User == user) {
			bs = append(bs, b)
		}
	}
	if c.Bool("json") {
		return writeJSONLines(c.App.Writer, bs)
	}
	return writeBindings(c.App.Writer, bs)
}

func bindingsWatchCommand() *cli.Command {
	return leaf(&cli.Command{
		Name:      "watch",
		Usage:     "print every bind, switch, unbind and expiry as it happens",
		UsageText: "threadbus bindings watch [--thread THREAD] [--json]",
		Description: "Prints the bindings present when it starts (as bind, with their bind time),\n" +
			"then one line per change until interrupted:\n" +
			"  bind    a connection was bound to a thread\n" +
			"  switch  a bound connection moved to another thread (from=)\n" +
			"  unbind  the binding ended: the connection closed or was unbound\n" +
			"  expire  the entry expired: its sidecar stopped refreshing it (it died)\n" +
			"With --thread, a connection that switches to another thread shows as unbind,\n" +
			"one that switches in as bind. With --json, one object per line:\n" +
			"{\"op\",\"time\",\"from\",\"binding\"}; time is the bind time for bind and switch,\n" +
			"the time the entry was removed for unbind and expire.\n\n" +
			"Example:\n" +
			"  $ threadbus bindings watch\n" +
			"  2026-05-01T10:00:00.123Z bind   conn=kD3vJb0tWmfd4PLvXy1aBc thread=demo sidecar=web-1 remote=127.0.0.1:51234\n" +
			"  2026-05-01T10:00:04.870Z switch conn=kD3vJb0tWmfd4PLvXy1aBc thread=other from=demo sidecar=web-1 remote=127.0.0.1:51234\n" +
			"  2026-05-01T10:00:09.410Z unbind conn=kD3vJb0tWmfd4PLvXy1aBc thread=other sidecar=web-1 remote=127.0.0.1:51234",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "thread", Usage: "only the bindings of thread `THREAD`"},
			&cli.BoolFlag{Name: "json", Usage: "one JSON object per line"},
			natsURLFlag(),
		},
	}, 0, 0, bindingsWatch)
}

// watchLine is a binding change as bindings watch --json prints it.
type watchLine struct {
	Op      bus.BindingOp `json:"op"`
	Time    time.Time     `json:"time"`
	From    string        `json:"from,omitempty"`
	Binding bus.Binding   `json:"binding"`
}

func bindingsWatch(c *cli.Context, _ []string) error {
	tid, err := threadFlag(c)
	if err != nil {
		return err
	}
	conn, err := connectNATS(c)
	if err != nil {
		return err
	}
	defer conn.close()
	w := c.App.Writer
	asJSON := c.Bool("json")
	var werr error
	err = bus.WatchBindings(conn.ctx, conn.js, tid, func(ch bus.BindingChange) bool {
		l := watchLine{Op: ch.Op, Time: ch.Time.UTC(), From: ch.From, Binding: ch.Binding}
		if (ch.Op == bus.OpBind || ch.Op == bus.OpSwitch) && !ch.Binding.BoundAt.IsZero() {
			// The entry's own time is its last refresh; the bind time is
			// what an operator asks for, also for the bindings listed first.
			l.Time = ch.Binding.BoundAt.UTC()
		}
		if asJSON {
			werr = writeJSONLines(w, []watchLine{l})
		} else {
			werr = writeWatchLine(w, l)
		}
		return werr == nil
	})
	if err != nil {
		return explain(err)
	}
	if werr != nil {
		return werr
	}
	return conn.ended(conn.ctx.Err())
}

func writeWatchLine(w io.Writer, l watchLine) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s %-6s conn=%s thread=%s", formatTime(l.Time), l.Op, l.Binding.ConnectionID, l.Binding.ThreadID)
	if l.From != "" {
		fmt.Fprintf(&sb, " from=%s", l.From)
	}
	fmt.Fprintf(&sb, " sidecar=%s", cell(l.Binding.SidecarID))
	if l.Binding.User != "" {
		fmt.Fprintf(&sb, " user=%s", cell(l.Binding.User))
	}
	if l.Binding.RemoteAddr != "" {
		fmt.Fprintf(&sb, " remote=%s", cell(l.Binding.RemoteAddr))
	}
	sb.WriteByte('\n')
	_, err := io.WriteString(w, sb.String())
	return err
}

// writeBindings prints bindings as an aligned table with a header.
func writeBindings(w io.Writer, bs []bus.Binding) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTION\tTHREAD\tSIDECAR\tUSER\tREMOTE\tBOUND\tREPLAY")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			b.ConnectionID, b.ThreadID, cell(b.SidecarID), cell(b.User), cell(b.RemoteAddr),
			formatTime(b.BoundAt), cell(b.ReplayFrom))
	}
	return tw.Flush()
}

// cell makes a registry value safe for one table cell or line: "-" when
// empty, quoted when it holds tabs or other control characters (values come
// from other processes, and a tab or newline would forge columns or rows).
func cell(s string) string {
	if s == "" {
		return "-"
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '\t' {
			return strconv.Quote(s)
		}
	}
	return s
}

func writeJSONLines[T any](w io.Writer, vs []T) error {
	enc := json.NewEncoder(w)
	for _, v := range vs {
		if err := enc.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

// threadFlag returns --thread, validated when given ("" when not).
func threadFlag(c *cli.Context) (string, error) {
	tid := c.String("thread")
	if c.IsSet("thread") {
		if err := subjects.ValidateThreadID(tid); err != nil {
			return "", err
		}
	}
	return tid, nil
}
