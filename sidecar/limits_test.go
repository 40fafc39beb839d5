package sidecar_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/sidecar"
	"github.com/threadbus/threadbus/subjects"
)

// metric returns the value of one series on /metrics, 0 when absent.
func (e *env) metric(series string) float64 {
	e.t.Helper()
	resp, err := http.Get(e.http + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func refused(reason string) string { return `threadbus_refused_total{reason="` + reason + `"}` }

// inbox subscribes to what the sidecar publishes on thread.<tid>.in.
func (e *env) inbox(tid string) *nats.Subscription {
	e.t.Helper()
	// A connection of its own: the bus's does not receive what it publishes.
	nc, err := nats.Connect(e.bus.Conn().ConnectedUrl())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	subj, _ := subjects.ThreadIn(tid)
	sub, err := nc.SubscribeSync(subj)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		e.t.Fatal(err)
	}
	return sub
}

// expectError reads frames until an error frame and checks its code.
func (c *client) expectError(code string) {
	c.t.Helper()
	for {
		f := c.read()
		if f["type"] != "error" {
			continue
		}
		if got := f["payload"].(map[string]any)["code"]; got != code {
			c.t.Fatalf("error frame %v, want code %s", f, code)
		}
		return
	}
}

// expectClose reads until the connection ends and checks the close status.
func (c *client) expectClose(code websocket.StatusCode, reason string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		_, _, err := c.ws.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code || ce.Reason != reason {
			c.t.Fatalf("connection ended with %v, want close %d %q", err, code, reason)
		}
		return
	}
}

func (c *client) awaitBound(tid string) {
	c.t.Helper()
	for {
		f := c.read()
		if f["type"] == "error" {
			c.t.Fatalf("error frame %v while binding %s", f, tid)
		}
		if f["type"] == "thread_bound" {
			if f["thread_id"] != tid {
				c.t.Fatalf("bound to %v, want %s", f["thread_id"], tid)
			}
			return
		}
	}
}

// published counts the frames that reached sub within a short wait.
func published(t *testing.T, sub *nats.Subscription) int {
	t.Helper()
	n := 0
	for {
		if _, err := sub.NextMsg(200 * time.Millisecond); err != nil {
			return n
		}
		n++
	}
}

func TestInvalidUTF8Closes1007(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	c := e.dial("")
	c.write("{\"type\":\"m\",\"content\":\"\xc3\x28\"}")
	c.expectClose(websocket.StatusInvalidFramePayloadData, "invalid UTF-8")
	if got := e.metric(refused("invalid_utf8")); got != 1 {
		t.Fatalf("refused invalid_utf8 = %v, want 1", got)
	}
}

func TestFrameRateLimited(t *testing.T) {
	e := newEnv(t, sidecar.Config{Limits: sidecar.Limits{FrameRate: 0.001, FrameBurst: 3, RateLimitTolerance: 100}})
	in := e.inbox("t1")
	c := e.dial("?thread_id=t1")
	c.awaitBound("t1")
	for i := range 5 {
		c.write(fmt.Sprintf(`{"type":"user_message","payload":{"content":"%d"}}`, i))
	}
	c.expectError("rate_limited")
	c.expectError("rate_limited")
	if n := published(t, in); n != 3 {
		t.Fatalf("%d frames published, want the burst of 3", n)
	}
	if got := e.metric(refused("frame_rate")); got != 2 {
		t.Fatalf("refused frame_rate = %v, want 2", got)
	}
}

func TestByteRateLimited(t *testing.T) {
	// Burst: 4 s of 1000 B/s, more than one largest frame (2000 B).
	e := newEnv(t, sidecar.Config{MaxFrameBytes: 2000, Limits: sidecar.Limits{ByteRate: 1000, RateLimitTolerance: 100}})
	in := e.inbox("t1")
	c := e.dial("?thread_id=t1")
	c.awaitBound("t1")
	big := `{"type":"user_message","payload":{"content":"` + strings.Repeat("x", 1400) + `"}}`
	for range 3 {
		c.write(big)
	}
	c.expectError("rate_limited")
	if n := published(t, in); n != 2 {
		t.Fatalf("%d frames published, want 2 (4000 B burst)", n)
	}
	if got := e.metric(refused("byte_rate")); got != 1 {
		t.Fatalf("refused byte_rate = %v, want 1", got)
	}
}

func TestSustainedAbuseCloses1008(t *testing.T) {
	e := newEnv(t, sidecar.Config{Limits: sidecar.Limits{FrameRate: 0.001, FrameBurst: 1, RateLimitTolerance: 3}})
	c := e.dial("")
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.ws.Write(ctx, websocket.MessageText, []byte(`{"type":"ping"}`))
		cancel()
		if err != nil {
			break // closed by the server
		}
	}
	c.expectClose(websocket.StatusPolicyViolation, "rate limit")
	if got := e.metric(refused("rate_close")); got != 1 {
		t.Fatalf("refused rate_close = %v, want 1", got)
	}
}

func TestBindRateLimited(t *testing.T) {
	e := newEnv(t, sidecar.Config{Limits: sidecar.Limits{BindRate: 0.001, BindBurst: 2, RateLimitTolerance: 100}})
	in := e.inbox("t3")
	c := e.dial("?thread_id=t0") // the URL's bind is not counted
	c.awaitBound("t0")
	c.write(`{"type":"switch_thread","payload":{"thread_id":"t1"}}`)
	c.awaitBound("t1")
	c.write(`{"type":"user_message","payload":{"thread_id":"t2"}}`)
	c.awaitBound("t2")
	c.write(`{"type":"user_message","payload":{"thread_id":"t3"}}`)
	c.expectError("rate_limited")
	if n := published(t, in); n != 0 {
		t.Fatalf("a frame naming a thread it could not bind was published (%d)", n)
	}
	// Still bound to t2: its events arrive.
	e.publish("t2", 1)
	for {
		f := c.read()
		if f["type"] == "agent_thinking" {
			if f["thread_id"] != "t2" {
				t.Fatalf("event %v, want thread t2", f)
			}
			break
		}
	}
	if got := e.metric(refused("bind_rate")); got != 1 {
		t.Fatalf("refused bind_rate = %v, want 1", got)
	}
}

func TestNewThreadsPerMinute(t *testing.T) {
	e := newEnv(t, sidecar.Config{Limits: sidecar.Limits{NewThreadsPerMinute: 2, RateLimitTolerance: 100}})
	c := e.dial("")
	for _, tid := range []string{"a", "b"} {
		c.write(`{"type":"switch_thread","payload":{"thread_id":"` + tid + `"}}`)
		c.awaitBound(tid)
	}
	c.write(`{"type":"switch_thread","payload":{"thread_id":"c"}}`)
	c.expectError("rate_limited")
	// Going back to a thread bound lately is no new thread.
	c.write(`{"type":"switch_thread","payload":{"thread_id":"a"}}`)
	c.awaitBound("a")
	if got := e.metric(refused("new_threads")); got != 1 {
		t.Fatalf("refused new_threads = %v, want 1", got)
	}
}

func TestLimitsOff(t *testing.T) {
	e := newEnv(t, sidecar.Config{Limits: sidecar.Limits{FrameRate: -1, BindRate: -1, NewThreadsPerMinute: -1, ByteRate: -1}})
	in := e.inbox("t1")
	c := e.dial("?thread_id=t1")
	c.awaitBound("t1")
	const n = 300 // beyond every default burst
	for i := range n {
		c.write(fmt.Sprintf(`{"type":"user_message","payload":{"content":"%d"}}`, i))
	}
	got := 0
	for got < n {
		if _, err := in.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("%d of %d frames published: %v", got, n, err)
		}
		got++
	}
}

// TestResumePastThreadLimit: a thread over its per-thread message limit
// lost its oldest events; a resume from before them is not recovered.
func TestResumePastThreadLimit(t *testing.T) {
	ns, err := bus.StartServer(bus.ServerConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	// Replay from the stream: the in-memory replay window (RecentBytes)
	// still holds events the per-thread limit removed, and replays them.
	b, err := bus.Open(context.Background(), bus.Config{URL: ns.ClientURL(), MaxMsgsPerSubject: 3, RecentBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	s, err := sidecar.New(sidecar.Config{Bus: b})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	t.Cleanup(func() { s.Close(context.Background()) })
	e := &env{t: t, bus: b, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", http: hs.URL}

	e.publish("t0", 1)         // keeps the stream's first sequence below t1's
	seqs := e.publish("t1", 5) // t1 keeps seqs[2:]
	for _, tt := range []struct {
		since     uint64
		recovered bool
		replayed  float64
	}{{seqs[0], false, 3}, {seqs[1], true, 3}, {seqs[3], true, 1}} {
		c := e.dial(fmt.Sprintf("?thread_id=t1&since=%d", tt.since))
		f := c.read()
		p, _ := f["payload"].(map[string]any)
		if f["type"] != "thread_bound" || p["recovered"] != tt.recovered || p["replayed"] != tt.replayed {
			t.Errorf("since %d: %v, want recovered %v replayed %v", tt.since, f, tt.recovered, tt.replayed)
		}
	}
}
