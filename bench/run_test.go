package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tinyConfig runs every scenario at a scale a loaded 2-core machine does
// in seconds. The tests assert what was counted, never how fast.
func tinyConfig() Config {
	return Config{
		Binary:      binPath,
		WaitTimeout: 30 * time.Second,
		DialWorkers: 4,
		Latency:     LatencyConfig{Rate: 200, Duration: 250 * time.Millisecond, Warmup: -1, Conns: 2},
		FanOut:      FanOutConfig{Conns: 5, Events: 50, Window: 8},
		Storm:       StormConfig{Conns: []int{5}, Events: 10},
		Inbound:     InboundConfig{Conns: 5, Frames: 20},
	}
}

func figure(t *testing.T, res Result, name string) Figure {
	t.Helper()
	for _, f := range res.Figures {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("%s: no figure %q in %+v", res.Label, name, res.Figures)
	return Figure{}
}

// wantZero checks a count that must be 0 on both sides, and that its
// target says so.
func wantZero(t *testing.T, res Result, name string, baseline bool) {
	t.Helper()
	f := figure(t, res, name)
	if f.Value != 0 || f.Target == nil || !f.Target.Met {
		t.Errorf("%s: %s = %v (target %+v), want 0 and met", res.Label, name, f.Value, f.Target)
	}
	if baseline && (f.Baseline == nil || f.Baseline.Value != 0) {
		t.Errorf("%s: %s baseline %+v, want 0", res.Label, name, f.Baseline)
	}
}

// wantPositive checks a measured figure and, with baseline, its baseline
// and ratio.
func wantPositive(t *testing.T, res Result, name string, baseline bool) {
	t.Helper()
	f := figure(t, res, name)
	if !(f.Value > 0) {
		t.Errorf("%s: %s = %v, want > 0", res.Label, name, f.Value)
	}
	if baseline && (f.Baseline == nil || !(f.Baseline.Value > 0) || f.Baseline.Ratio == nil) {
		t.Errorf("%s: %s baseline %+v, want a value and a ratio", res.Label, name, f.Baseline)
	}
}

// TestRunEveryScenario runs every scenario against sidecars Run starts
// itself, a fresh one per phase, and checks that every figure is produced
// and nothing was lost.
func TestRunEveryScenario(t *testing.T) {
	var progress bytes.Buffer
	cfg := tinyConfig()
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Results) != 4 {
		t.Fatalf("%d results, want one per scenario: %+v", len(rep.Results), rep.Results)
	}
	byScenario := map[Scenario]Result{}
	for _, r := range rep.Results {
		byScenario[r.Scenario] = r
		if !strings.Contains(r.Sidecar, "started by the bench") {
			t.Errorf("%s: sidecar %q, want one started by the bench", r.Label, r.Sidecar)
		}
	}

	lat := byScenario[Latency]
	for _, name := range []string{"p50 publish to frame", "p99 publish to frame", "p99.9 publish to frame", "p99 vs core sub"} {
		wantPositive(t, lat, name, true)
	}
	if f := figure(t, lat, "p99 publish to frame"); f.Target == nil {
		t.Errorf("latency p99 has no target")
	}
	wantZero(t, lat, "events lost", true)

	fan := byScenario[FanOut]
	wantPositive(t, fan, "events/s delivered", true)
	wantZero(t, fan, "events lost", true)

	storm := byScenario[Storm]
	for _, name := range []string{"bind storm: all replays complete", "one bind, p50", "open all conns"} {
		wantPositive(t, storm, name, true)
	}
	figure(t, storm, "RSS per unbound conn")
	if f := figure(t, storm, "RSS per bound conn, just bound"); f.Baseline == nil || f.Target == nil {
		t.Errorf("storm: RSS per bound conn %+v, want a baseline and a target", f)
	}
	wantZero(t, storm, "events lost", true)

	in := byScenario[Inbound]
	wantPositive(t, in, "frames/s stored", true)
	wantZero(t, in, "frames lost", true)

	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"machine:", "SCENARIO", "events/s delivered", "bind storm", "frames/s stored", "sidecar counters"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	path := filepath.Join(t.TempDir(), "report.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != 4 || back.Machine.CPUs == 0 {
		t.Errorf("report JSON does not round-trip (%v): %s", err, b)
	}
	t.Logf("report:\n%s", table.String())
}

// TestRunningSidecar runs scenarios against a sidecar given by address, as
// `threadbus bench --http --nats-url` does: memory and CPU then come from
// its /metrics, and without a WebSocket listener the fan-out baseline is
// skipped, not failed.
func TestRunningSidecar(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := startProcess(ctx, binPath, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	})
	if p.addrs.NATSWS == "" || !strings.HasPrefix(p.addrs.NATSWS, "ws://127.0.0.1:") {
		t.Fatalf("started sidecar has no loopback nats-server WebSocket listener: %+v", p.addrs)
	}

	cfg := tinyConfig()
	cfg.Binary = ""
	cfg.HTTPAddr, cfg.NATSURL = p.addrs.HTTP, p.addrs.NATS
	cfg.Scenarios = []Scenario{Storm, FanOut}
	cfg.Storm.Conns = []int{4, 6}
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Results) != 3 {
		t.Fatalf("%d results, want two storms and a fan-out", len(rep.Results))
	}
	for _, r := range rep.Results {
		if !strings.Contains(r.Sidecar, p.addrs.HTTP) {
			t.Errorf("%s: sidecar %q, want the running one", r.Label, r.Sidecar)
		}
		if !strings.Contains(strings.Join(r.Notes, "\n"), "baseline skipped") {
			t.Errorf("%s: no note that the baseline was skipped: %q", r.Label, r.Notes)
		}
	}
	for _, storm := range rep.Results[:2] {
		wantPositive(t, storm, "bind storm: all replays complete", false)
		wantZero(t, storm, "events lost", false)
		if !strings.Contains(strings.Join(storm.Notes, "\n"), "connections complete") {
			t.Errorf("%s: notes %q", storm.Label, storm.Notes)
		}
	}
	fan := rep.Results[2]
	wantPositive(t, fan, "events/s delivered", false)
	wantZero(t, fan, "events lost", false)

	// The sidecar outlives the run and serves its metrics.
	tg := &target{addrs: p.addrs, hc: http.DefaultClient}
	u, err := tg.usage(ctx)
	if err != nil || u.RSS == 0 {
		t.Errorf("usage from /metrics: %+v, %v", u, err)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"unknown scenario":  {Scenarios: []Scenario{"nope"}, Binary: "x"},
		"http without nats": {HTTPAddr: "127.0.0.1:1"},
		"nats without http": {NATSURL: "nats://127.0.0.1:1"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Run(context.Background(), cfg); err == nil {
				t.Fatal("Run accepted the config")
			}
		})
	}
}
