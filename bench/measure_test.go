package bench

import (
	"context"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/threadbus/threadbus/frame"
)

func TestQuantile(t *testing.T) {
	var s samples
	for i := 1000; i >= 1; i-- { // unsorted on purpose
		s = append(s, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{0.5: 500, 0.99: 990, 0.999: 999, 1: 1000, 0.0001: 1} {
		if got := s.quantile(q); got != want {
			t.Errorf("quantile(%v) = %v, want %v", q, got, want)
		}
	}
	if got := (samples{}).quantile(0.5); got != 0 {
		t.Errorf("quantile of nothing = %v", got)
	}
	sum := summarize(samples{3, 1, 2})
	if sum.N != 3 || sum.P50 != 2 || sum.Max != 3 || sum.Mean != 2 {
		t.Errorf("summarize = %+v", sum)
	}
}

// The bench reads events the way the sidecar writes them (frame.Event).
func TestParseDeliveredEvent(t *testing.T) {
	for _, size := range []int{minPayloadBytes, 256, 4096} {
		body := eventBody(42, size)
		if len(body) < size-1 || len(body) > size+1 {
			t.Errorf("eventBody(%d) is %d bytes", size, len(body))
		}
		f := parseFrame(frame.Event(body, "bench_x_fan_0", 1234))
		if f.kind != eventFrame || f.seq != 1234 || f.n != 42 {
			t.Errorf("size %d: parsed %+v, want event seq 1234 n 42", size, f)
		}
		if n := bodyN(body); n != 42 {
			t.Errorf("bodyN = %d", n)
		}
	}
	if f := parseFrame(frame.ThreadBound(frame.Bound{ThreadID: "t", Replayed: 10})); f.kind != boundFrame || f.replayed != 10 {
		t.Errorf("thread_bound parsed as %+v", f)
	}
	if f := parseFrame(frame.Error("bind_failed", "x")); f.kind != errorFrame || f.code != "bind_failed" {
		t.Errorf("error parsed as %+v", f)
	}
	if f := parseFrame([]byte("not json")); f.kind != otherFrame {
		t.Errorf("garbage parsed as %+v", f)
	}
	// Client frames are valid frames naming their thread.
	c, err := frame.Parse(clientFrame(7, "bench_x_in_3", 256))
	if err != nil || c.ThreadID != "bench_x_in_3" || bodyN(c.Raw) != 7 {
		t.Errorf("clientFrame parses as %+v, %v", c, err)
	}
	s, err := frame.Parse(switchFrame("bench_x_storm_1"))
	if err != nil || s.Type != frame.TypeSwitchThread || s.ThreadID != "bench_x_storm_1" || s.Since == nil || *s.Since != 0 {
		t.Errorf("switchFrame parses as %+v, %v", s, err)
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP threadbus_connections_open WebSocket connections open now.
# TYPE threadbus_connections_open gauge
threadbus_connections_open 3
threadbus_events_delivered_total{path="live"} 12
threadbus_events_delivered_total{path="replay"} 1.5e+06
odd{label="with space } inside"} 7 1700000000000
process_resident_memory_bytes 4.2e+07
broken line
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"threadbus_connections_open":                      3,
		`threadbus_events_delivered_total{path="live"}`:   12,
		`threadbus_events_delivered_total{path="replay"}`: 1.5e6,
		`odd{label="with space } inside"}`:                7,
		"process_resident_memory_bytes":                   4.2e7,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, m[k], v, m)
		}
	}
}

func TestReadyLine(t *testing.T) {
	line := `time=2026-01-01T00:00:00Z level=INFO msg="threadbus ready" http=127.0.0.1:41234 nats=nats://127.0.0.1:40000 sidecar=abc epoch=x`
	if !readyLine.MatchString(line) {
		t.Fatal("ready line not recognised")
	}
	if m := attrHTTP.FindStringSubmatch(line); m == nil || m[1] != "127.0.0.1:41234" {
		t.Errorf("http = %v", m)
	}
	if m := attrNATS.FindStringSubmatch(line); m == nil || m[1] != "nats://127.0.0.1:40000" {
		t.Errorf("nats = %v", m)
	}
	ws := `time=... level=INFO msg="Listening for websocket clients on ws://127.0.0.1:35555" component=nats-server`
	if m := wsListener.FindStringSubmatch(ws); m == nil || m[1] != "ws://127.0.0.1:35555" {
		t.Errorf("websocket listener = %v", m)
	}
}

func TestTally(t *testing.T) {
	tl := newTally(time.Now(), 1000)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			for range 100 {
				tl.add(1)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tl.wait(ctx, 500); err != nil {
		t.Fatal(err)
	}
	if err := tl.wait(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, ok := tl.finishedAt(); !ok || tl.count() != 1000 {
		t.Errorf("count %d, finished %v", tl.count(), ok)
	}
	short, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := tl.wait(short, 1001); err == nil {
		t.Error("wait beyond the final count returned without error")
	}
}

func TestFigureTargets(t *testing.T) {
	f := Figure{Name: "p99", Unit: UnitSeconds, Value: 0.003}.withBaseline("sub", 0.002).ratioAtMost(2)
	if !f.Target.Met || math.Abs(*f.Baseline.Ratio-1.5) > 1e-9 {
		t.Errorf("1.5x against <= 2x: %+v %+v", f.Target, *f.Baseline.Ratio)
	}
	if f := (Figure{Value: 1}).withBaseline("b", 0).ratioAtLeast(1); f.Target.Met || f.Baseline.Ratio != nil {
		t.Errorf("a ratio over a zero baseline: %+v", f)
	}
	if f := (Figure{Unit: UnitBytes, Value: 16 << 10}).below(16<<10, true); !f.Target.Met || f.Target.Goal != "<= 16.0 KiB" {
		t.Errorf("inclusive bound: %+v", f.Target)
	}
	if f := (Figure{Unit: UnitSeconds, Value: 5}).below(5, false); f.Target.Met {
		t.Errorf("strict bound: %+v", f.Target)
	}
	if got := formatRate(1234567.4); got != "1,234,567" {
		t.Errorf("formatRate = %q", got)
	}
}
