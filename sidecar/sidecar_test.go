package sidecar_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/sidecar"
	"github.com/threadbus/threadbus/subjects"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type env struct {
	t    *testing.T
	bus  *bus.Bus
	url  string // ws://.../ws
	http string // http://host:port
}

// openBus starts an embedded NATS server and opens a Bus on it, both
// closed when the test ends.
func openBus(t *testing.T) *bus.Bus {
	t.Helper()
	ns, err := bus.StartServer(bus.ServerConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{URL: ns.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	return b
}

func newEnv(t *testing.T, cfg sidecar.Config) *env {
	t.Helper()
	b := openBus(t)
	cfg.Bus = b
	s, err := sidecar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	t.Cleanup(func() { s.Close(context.Background()) })
	return &env{t: t, bus: b, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", http: hs.URL}
}

type client struct {
	t  *testing.T
	ws *websocket.Conn
}

func (e *env) dial(query string) *client {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, e.url+query, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ws.CloseNow() })
	c := &client{t: e.t, ws: ws}
	if f := c.read(); f["type"] != "connection_established" {
		e.t.Fatalf("first frame %v", f)
	}
	return c
}

func (c *client) read() map[string]any {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, data, err := c.ws.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		c.t.Fatalf("frame %s: %v", data, err)
	}
	return m
}

func (c *client) write(s string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

func (e *env) publish(tid string, n int) []uint64 {
	e.t.Helper()
	var seqs []uint64
	for i := range n {
		seq, err := e.bus.PublishEvent(context.Background(), tid, fmt.Appendf(nil, `{"type":"agent_thinking","i":%d}`, i))
		if err != nil {
			e.t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

func (c *client) expectBound(tid string, replayed int) {
	c.t.Helper()
	f := c.read()
	p, _ := f["payload"].(map[string]any)
	if f["type"] != "thread_bound" || f["thread_id"] != tid || p["replayed"] != float64(replayed) {
		c.t.Fatalf("got %v, want thread_bound %s replayed %d", f, tid, replayed)
	}
}

func (c *client) expectEvents(tid string, seqs []uint64) {
	c.t.Helper()
	for _, want := range seqs {
		f := c.read()
		if f["thread_id"] != tid || f["seq"] != float64(want) {
			c.t.Fatalf("got %v, want event %s seq %d", f, tid, want)
		}
	}
}

func TestBindByFrameReplaysThenLive(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	before := e.publish("t1", 5)
	c := e.dial("")
	c.write(`{"type":"user_message","payload":{"content":"hi","thread_id":"t1"}}`)
	c.expectBound("t1", 5)
	c.expectEvents("t1", before)
	c.expectEvents("t1", e.publish("t1", 3))
}

func TestSwitchStopsPreviousThread(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	c := e.dial("?thread_id=a")
	c.expectBound("a", 0)
	c.expectEvents("a", e.publish("a", 2))
	c.write(`{"type":"switch_thread","payload":{"thread_id":"b"}}`)
	c.expectBound("b", 0)
	e.publish("a", 2)
	c.expectEvents("b", e.publish("b", 2))
}

func TestSinceResumes(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	seqs := e.publish("r", 6)
	c := e.dial(fmt.Sprintf("?thread_id=r&since=%d", seqs[2]))
	c.expectBound("r", 3)
	c.expectEvents("r", seqs[3:])
}

func TestBadInputKeepsConnection(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	c := e.dial("")
	for in, code := range map[string]string{
		`nope`: "invalid_json",
		`[1]`:  "invalid_frame",
		`{"type":"m","payload":{"thread_id":"a.b"}}`: "invalid_thread_id",
	} {
		c.write(in)
		f := c.read()
		p, _ := f["payload"].(map[string]any)
		if f["type"] != "error" || p["code"] != code {
			t.Fatalf("%s: got %v, want error %s", in, f, code)
		}
	}
	c.write(`{"type":"ping","timestamp":5}`)
	if f := c.read(); f["type"] != "pong" || f["timestamp"] != float64(5) {
		t.Fatalf("got %v, want pong", f)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	replayed := e.publish("m", 2)
	c := e.dial("?thread_id=m")
	c.expectBound("m", 2)
	c.expectEvents("m", replayed)
	c.expectEvents("m", e.publish("m", 3))
	c.write(`{"type":"switch_thread","payload":{"thread_id":"m2"}}`)
	c.expectBound("m2", 0)
	c.write(`{"type":"ping"}`)
	c.read()
	c.write(`nope`)
	c.read()

	want := []string{
		`threadbus_connections_open 1`,
		`threadbus_binds_total 2`,
		`threadbus_switches_total 1`,
		`threadbus_events_delivered_total{path="replay"} 2`,
		`threadbus_events_delivered_total{path="live"} 3`,
		`threadbus_frames_in_total{kind="ping"} 1`,
		`threadbus_frames_in_total{kind="switch"} 1`,
		`threadbus_frames_in_total{kind="invalid"} 1`,
		`threadbus_delivery_latency_seconds_count 3`,
		`threadbus_bind_duration_seconds_count 2`,
		`threadbus_live_gaps_repaired_total 0`,
		`threadbus_replay_scan_passes_total 0`,
		`threadbus_replay_scan_messages_total 0`,
		`threadbus_events_dropped_total{reason="slow_consumer"} 0`,
	}
	var body string
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(e.http + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q:\n%s", missing, body)
		}
		time.Sleep(20 * time.Millisecond) // polling: the writer counts after the client read
	}
}

// TestSlowReplayOutlastsBindTimeout: a replay paced by a client that reads
// slowly lasts longer than the bind timeout; after thread_bound promised
// its events, every one of them arrives (it used to end in bind_failed).
func TestSlowReplayOutlastsBindTimeout(t *testing.T) {
	e := newEnv(t, sidecar.Config{BindTimeout: 300 * time.Millisecond, SendQueueBytes: 64 << 10})
	// 5 MiB: more than the socket buffers hold, so the client's pace is
	// the replay's.
	pad := strings.Repeat("x", 16<<10)
	var seqs []uint64
	for i := range 320 {
		seq, err := e.bus.PublishEvent(context.Background(), "slow", fmt.Appendf(nil, `{"type":"agent_thinking","i":%d,"pad":%q}`, i, pad))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	c := e.dial("?thread_id=slow&since=0")
	c.ws.SetReadLimit(1 << 20)
	c.expectBound("slow", len(seqs))
	began := time.Now()
	for i, want := range seqs {
		if i%64 == 0 {
			time.Sleep(100 * time.Millisecond) // the client stops reading a while
		}
		f := c.read()
		if f["seq"] != float64(want) {
			t.Fatalf("event %d: got %v, want seq %d", i, f, want)
		}
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Fatalf("the replay took %v: not longer than the bind timeout, the test proves nothing", took)
	}
}

// TestBackendBindRacingCloseLeavesNoBinding: backend binds that race the
// connection's close must not leave a registry entry behind (its sidecar
// would refresh it for ever: a listener that does not exist).
func TestBackendBindRacingCloseLeavesNoBinding(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	// No events: a bind whose replay has nothing to send reaches its end
	// even when the connection closed while it joined the feed.
	backend, err := nats.Connect(e.bus.Conn().ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	for i := range 40 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ws, _, err := websocket.Dial(ctx, e.url, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		c := &client{t: t, ws: ws}
		f := c.read()
		p, _ := f["payload"].(map[string]any)
		cid, _ := p["connection_id"].(string)
		subj, err := subjects.ConnBind(cid)
		if err != nil {
			t.Fatalf("first frame %v: %v", f, err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			_, _ = backend.Request(subj, []byte(`{"thread_id":"race","since":0}`), 500*time.Millisecond)
		})
		time.Sleep(time.Duration(i%8) * 250 * time.Microsecond)
		c.ws.CloseNow()
		wg.Wait()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		bs, err := bus.ListBindings(context.Background(), e.bus.JetStream(), "race")
		if err != nil {
			t.Fatal(err)
		}
		if len(bs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bindings left by connections that closed: %+v", len(bs), bs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
