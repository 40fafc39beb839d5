package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

var publishedLine = regexp.MustCompile(`^published thread\.([A-Za-z0-9_-]+)\.out seq (\d+)\n$`)

// publishedSeq parses the output of threadbus publish.
func publishedSeq(t testing.TB, r cliResult, tid string) uint64 {
	t.Helper()
	m := publishedLine.FindStringSubmatch(r.Stdout)
	if r.Code != 0 || m == nil || m[1] != tid {
		t.Fatalf("want \"published thread.%s.out seq N\"; %s", tid, r)
	}
	seq, _ := strconv.ParseUint(m[2], 10, 64)
	return seq
}

// threadbus publish stores an event as an agent would; the seq it prints is
// the one the bound WebSocket client receives the event with.
func TestCLIPublish(t *testing.T) {
	t.Parallel()
	const tid = "cli_pub"
	sc := startSidecar(t, sidecarConfig{})
	c := dial(t, sc, "client", dialOptions{Query: "thread_id=" + tid})
	c.expectBound(tid)

	// --type with a body: the type is set first, other keys keep their order.
	seq := publishedSeq(t, cliOK(t, sc.NATSURL, "publish", tid, "--type", "agent_thinking",
		`{"type":"replaced","run_id":"r1","payload":{"reasoning":"looking","step_number":1}}`), tid)
	f := c.expectEvents(tid, []uint64{seq})[0]
	want := fmt.Sprintf(`{"thread_id":%q,"seq":%d,"type":"agent_thinking","run_id":"r1","payload":{"reasoning":"looking","step_number":1}}`, tid, seq)
	if !jsonEqual(f.Raw, []byte(want)) {
		t.Errorf("client received %s, want %s", f, want)
	}

	// Body from stdin, and the flag given before the thread.
	r := cliStdin(t, "", "{\n  \"type\": \"agent_completed\",\n  \"payload\": {}\n}\n", "publish", "--nats-url", sc.NATSURL, tid, "-")
	seq2 := publishedSeq(t, r, tid)
	if f := c.expectEvents(tid, []uint64{seq2})[0]; f.Type != "agent_completed" {
		t.Errorf("event from stdin: %s", f)
	}

	// --type alone publishes {"type":...}.
	seq3 := publishedSeq(t, cliOK(t, sc.NATSURL, "publish", tid, "--type", "agent_started"), tid)
	f = c.expectEvents(tid, []uint64{seq3})[0]
	if want := fmt.Sprintf(`{"thread_id":%q,"seq":%d,"type":"agent_started"}`, tid, seq3); !jsonEqual(f.Raw, []byte(want)) {
		t.Errorf("client received %s, want %s", f, want)
	}
	if !(seq < seq2 && seq2 < seq3) {
		t.Errorf("seqs %d, %d, %d not increasing", seq, seq2, seq3)
	}

	// Bodies that are not one JSON object are refused, and nothing is stored.
	ag := newAgent(t, sc.NATSURL)
	for _, body := range []string{`[1,2]`, `"text"`, `not json`, `{"a":1} {"b":2}`, ``} {
		cliFails(t, sc.NATSURL, []string{"publish", tid, body}, "must be a JSON object")
	}
	cliFails(t, sc.NATSURL, []string{"publish", tid}, "publish: missing the event")
	ag.expectCount(t, "thread."+tid+".out", 3, "refused bodies must not be published")
	c.expectQuiet()
}

// threadsJSON is the output of threads show --json.
type threadsJSON struct {
	ThreadID     string     `json:"thread_id"`
	Count        uint64     `json:"count"`
	FirstSeq     uint64     `json:"first_seq"`
	LastSeq      uint64     `json:"last_seq"`
	Bytes        uint64     `json:"bytes"`
	LastActivity *time.Time `json:"last_activity"`
	Out          dirJSON    `json:"out"`
	In           dirJSON    `json:"in"`
	Bindings     []cliEntry `json:"bindings"`
}

type dirJSON struct {
	Count        uint64     `json:"count"`
	FirstSeq     uint64     `json:"first_seq"`
	LastSeq      uint64     `json:"last_seq"`
	Bytes        uint64     `json:"bytes"`
	LastActivity *time.Time `json:"last_activity"`
}

// tailJSON is one line of tail --json.
type tailJSON struct {
	Seq        uint64          `json:"seq"`
	Time       time.Time       `json:"time"`
	Direction  string          `json:"direction"`
	Subject    string          `json:"subject"`
	Connection string          `json:"connection"`
	Body       json.RawMessage `json:"body"`
}

var tailLine = regexp.MustCompile(`^(\d+) (\S+) (in |out) (.*)$`)

// stored is one message the test put on a thread.
type stored struct {
	seq  uint64
	dir  string
	body []byte
}

// threads show and tail report what the stream holds for a thread: agent
// events and client frames, each direction on its own and together.
func TestCLIThreadsShowAndTail(t *testing.T) {
	t.Parallel()
	const tid = "cli_show"
	sc := startSidecar(t, sidecarConfig{})
	url := sc.NATSURL
	ag := newAgent(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var msgs []stored
	for i := range 3 {
		body := ag.event(tid, "agent_thinking", i*10)
		seq, err := ag.publish(ctx, tid, body)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, stored{seq, "out", body})
	}
	c := dial(t, sc, "client", dialOptions{Query: "thread_id=" + tid + "&since=0"})
	c.expectBound(tid)
	c.expectEvents(tid, ag.expected(tid))
	frames := []string{
		`{"type":"user_message","payload":{"content":"first","references":[],"thread_id":"` + tid + `"}}`,
		`{"type":"stop_agent","payload":{}}`,
	}
	for i, f := range frames {
		// One at a time, to learn each frame's seq from the stream.
		c.send(f)
		ag.expectCount(t, "thread."+tid+".in", uint64(i+1), "the client's frames")
		m := ag.lastMsg(t, "thread."+tid+".in")
		if m == nil || string(m.Data) != f {
			t.Fatalf("last frame stored on thread.%s.in: %+v, want %s", tid, m, f)
		}
		msgs = append(msgs, stored{m.Sequence, "in", m.Data})
	}
	slices.SortFunc(msgs, func(a, b stored) int { return cmp.Compare(a.seq, b.seq) })

	// threads show --json: the figures of what was stored.
	var want threadsJSON
	want.ThreadID = tid
	for _, m := range msgs {
		d := &want.Out
		if m.dir == "in" {
			d = &want.In
		}
		if d.Count == 0 {
			d.FirstSeq = m.seq
		}
		d.Count++
		d.LastSeq = m.seq
		d.Bytes += uint64(len(m.body))
		want.Bytes += uint64(len(m.body))
	}
	want.Count = want.Out.Count + want.In.Count
	want.FirstSeq, want.LastSeq = msgs[0].seq, msgs[len(msgs)-1].seq
	lastAt, err := ag.storedAt(ctx, want.LastSeq)
	if err != nil {
		t.Fatal(err)
	}

	r := cliOK(t, url, "threads", "show", tid, "--json")
	var got threadsJSON
	if err := json.Unmarshal([]byte(r.Stdout), &got); err != nil {
		t.Fatalf("threads show --json: %v\n%s", err, r.Stdout)
	}
	if got.ThreadID != tid || got.Count != want.Count || got.FirstSeq != want.FirstSeq || got.LastSeq != want.LastSeq || got.Bytes != want.Bytes ||
		got.Out.Count != want.Out.Count || got.Out.FirstSeq != want.Out.FirstSeq || got.Out.LastSeq != want.Out.LastSeq || got.Out.Bytes != want.Out.Bytes ||
		got.In.Count != want.In.Count || got.In.FirstSeq != want.In.FirstSeq || got.In.LastSeq != want.In.LastSeq || got.In.Bytes != want.In.Bytes {
		t.Errorf("threads show --json:\n%s\nwant counts, seqs and bytes %+v", r.Stdout, want)
	}
	if got.LastActivity == nil || !got.LastActivity.Equal(lastAt) {
		t.Errorf("threads show: last activity %v, want %v (when seq %d was stored)", got.LastActivity, lastAt, want.LastSeq)
	}
	if len(got.Bindings) != 1 || got.Bindings[0].ConnectionID != c.CID || got.Bindings[0].ThreadID != tid {
		t.Errorf("threads show: bindings %+v, want the client %s", got.Bindings, c.CID)
	}

	// The text form: a summary line, the aligned per-direction table, the bindings.
	text := cliLines(cliOK(t, url, "threads", "show", tid).Stdout)
	if len(text) != 7 || text[0] != fmt.Sprintf("thread %s: %d messages stored, 1 connection bound", tid, want.Count) {
		t.Fatalf("threads show:\n%s", strings.Join(text, "\n"))
	}
	tb := cliParseTable(t, text[1:5], "DIRECTION", "COUNT", "FIRST SEQ", "LAST SEQ", "BYTES", "LAST ACTIVITY")
	for i, w := range []dirJSON{want.Out, want.In, {Count: want.Count, FirstSeq: want.FirstSeq, LastSeq: want.LastSeq, Bytes: want.Bytes}} {
		row := tb.rows[i]
		if row["COUNT"] != fmt.Sprint(w.Count) || row["FIRST SEQ"] != fmt.Sprint(w.FirstSeq) || row["LAST SEQ"] != fmt.Sprint(w.LastSeq) || row["BYTES"] != fmt.Sprint(w.Bytes) {
			t.Errorf("threads show row %v, want %+v", row, w)
		}
	}
	if tb.rows[2]["LAST ACTIVITY"] != lastAt.UTC().Format("2006-01-02T15:04:05.000Z07:00") {
		t.Errorf("threads show total last activity %q, want %s", tb.rows[2]["LAST ACTIVITY"], lastAt.UTC())
	}
	if bt := cliParseTable(t, text[5:], cliBindingsCols...); len(bt.rows) != 1 || bt.rows[0]["CONNECTION"] != c.CID {
		t.Errorf("threads show bindings: %v, want the client %s", bt.rows, c.CID)
	}

	// tail: every message, both directions, in stream order, bodies as stored.
	checkTail := func(args []string, want []stored) {
		t.Helper()
		lines := cliLines(cliOK(t, url, append([]string{"tail", tid}, args...)...).Stdout)
		if len(lines) != len(want) {
			t.Fatalf("tail %v printed %d lines, want %d:\n%s", args, len(lines), len(want), strings.Join(lines, "\n"))
		}
		for i, l := range lines {
			m := tailLine.FindStringSubmatch(l)
			if m == nil || m[1] != fmt.Sprint(want[i].seq) || strings.TrimSpace(m[3]) != want[i].dir || !jsonEqual([]byte(m[4]), want[i].body) {
				t.Errorf("tail %v line %d: %q, want seq %d, direction %s, body %s", args, i, l, want[i].seq, want[i].dir, want[i].body)
			}
			if _, err := time.Parse(time.RFC3339Nano, m[2]); err != nil {
				t.Errorf("tail line %q: time %q: %v", l, m[2], err)
			}
		}
	}
	checkTail(nil, msgs)
	checkTail([]string{"--since", fmt.Sprint(msgs[1].seq)}, msgs[2:])
	checkTail([]string{"--since", "1h"}, msgs)
	checkTail([]string{"--since", fmt.Sprint(want.LastSeq)}, nil)
	checkTail([]string{"--since", lastAt.Add(time.Second).Format(time.RFC3339Nano)}, nil)

	// tail --follow: what is stored, then what comes.
	follow := startCLI(t, url, "tail", tid, "--follow", "--since", fmt.Sprint(msgs[len(msgs)-2].seq))
	follow.waitLine(t, waitTimeout, regexp.MustCompile(`^`+fmt.Sprint(want.LastSeq)+` `))
	c.send(`{"type":"user_message","payload":{"content":"later","references":[],"thread_id":"` + tid + `"}}`)
	follow.waitLine(t, waitTimeout, regexp.MustCompile(`^\d+ \S+ in  \{"type":"user_message","payload":\{"content":"later"`))
	seq := publishedSeq(t, cliOK(t, url, "publish", tid, "--type", "agent_completed"), tid)
	follow.waitLine(t, waitTimeout, regexp.MustCompile(`^`+fmt.Sprint(seq)+` \S+ out \{"type":"agent_completed"\}$`))
	follow.interrupt(t)
	if n := len(follow.lines()); n != 3 {
		t.Errorf("tail --follow printed %d lines, want 3 (the last stored, a frame, an event):\n%s", n, strings.Join(follow.lines(), "\n"))
	}

	// Every run deleted its consumer (the sidecar itself uses none).
	info, err := ag.stream(t).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 0 {
		t.Errorf("stream %s has %d consumers after the CLI runs, want 0", streamName, info.State.Consumers)
	}

	// A thread nobody used is an error, not an empty report.
	cliFails(t, url, []string{"threads", "show", "cli_nobody"}, "unknown thread cli_nobody: nothing stored and no connection bound")
	if r := cliOK(t, url, "tail", "cli_nobody"); r.Stdout != "" {
		t.Errorf("tail of an empty thread printed %q", r.Stdout)
	}
}

// A thread with a bound connection and nothing stored is known.
func TestCLIThreadsShowBoundOnly(t *testing.T) {
	t.Parallel()
	const tid = "cli_bound_only"
	sc := startSidecar(t, sidecarConfig{})
	c := dial(t, sc, "client", dialOptions{Query: "thread_id=" + tid})
	c.expectBound(tid)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var r cliResult
	if waitUntil(ctx, func() bool { r = cli(t, sc.NATSURL, "threads", "show", tid, "--json"); return r.Code == 0 }) != nil {
		t.Fatalf("threads show of a thread with a bound connection: %s", r)
	}
	var got threadsJSON
	if err := json.Unmarshal([]byte(r.Stdout), &got); err != nil || got.Count != 0 || got.LastActivity != nil || len(got.Bindings) != 1 || got.Bindings[0].ConnectionID != c.CID {
		t.Errorf("threads show --json: %s (%v); want no message and the client %s", r.Stdout, err, c.CID)
	}
}

// threadbus bind binds a real connection, as the backend's request does.
func TestCLIBind(t *testing.T) {
	t.Parallel()
	const tid = "cli_bind"
	sc := startSidecar(t, sidecarConfig{})
	url := sc.NATSURL
	ag := newAgent(t, url)
	before := ag.mustPublish(t, tid, 2)
	c := dial(t, sc, "client", dialOptions{})

	r := cliOK(t, url, "bind", c.CID, tid, "--since", "0")
	want := fmt.Sprintf(`^bound connection %s to thread %s: replayed 2, recovered true, epoch \S+\n$`, c.CID, tid)
	if !regexp.MustCompile(want).MatchString(r.Stdout) {
		t.Errorf("bind output %q, want %s", r.Stdout, want)
	}
	b := c.expectBound(tid)
	if b.Replayed != 2 || !strings.HasSuffix(strings.TrimSpace(r.Stdout), "epoch "+b.Epoch) {
		t.Errorf("thread_bound %+v after %q", b, r.Stdout)
	}
	c.expectEvents(tid, before)

	// --json prints the sidecar's reply; since the last event, nothing to replay.
	r = cliOK(t, url, "bind", "--json", c.CID, tid+"_2", "--since", "0")
	var reply bindReply
	if err := json.Unmarshal([]byte(r.Stdout), &reply); err != nil || !reply.OK || reply.ThreadID != tid+"_2" || reply.Replayed != 0 {
		t.Errorf("bind --json: %q (%v)", r.Stdout, err)
	}
	c.expectBound(tid + "_2")

	cliFails(t, url, []string{"bind", "cli_no_such_conn", tid}, "no sidecar has connection cli_no_such_conn open")

	// An error reply is reported with its message and code.
	sub, err := ag.nc.Subscribe("conn.cli_fake.bind", func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"error":{"code":"bind_failed","message":"stream unavailable"}}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := ag.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	cliFails(t, url, []string{"bind", "cli_fake", tid}, "bind connection cli_fake to thread "+tid+": stream unavailable (bind_failed)")
	c.expectQuiet()
}
