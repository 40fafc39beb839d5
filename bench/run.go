package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nuid"
)

// env is what a scenario runs with: the run's configuration and shared
// clients. Each phase of a scenario gets its sidecar from phase.
type env struct {
	cfg  Config
	run  string // this run's id, in every thread name
	hc   *http.Client
	prog *progress
	log  *slog.Logger
}

// thread is the id of thread i of a phase of this run.
func (e *env) thread(phase string, i int) string { return threadName(e.run, phase, i) }

// phase runs fn against the sidecar under test: the configured one, or a
// fresh one started for fn and stopped after it, so that no phase measures
// memory or CPU another one left behind. What the sidecar's own counters
// moved by during fn is noted in res.
func (e *env) phase(ctx context.Context, res *Result, name string, fn func(t *target) error) error {
	return e.phaseWith(ctx, res, name, nil, fn)
}

// phaseWith is phase with more `threadbus serve` arguments for a sidecar it
// starts, after Config.SidecarArgs.
func (e *env) phaseWith(ctx context.Context, res *Result, name string, extra []string, fn func(t *target) error) error {
	t, err := e.acquire(ctx, extra)
	if err != nil {
		return err
	}
	before, _ := t.scrape(ctx) // best effort: the counters are a note
	err = fn(t)
	if after, serr := t.scrape(context.WithoutCancel(ctx)); serr == nil && before != nil {
		if s, moved := sidecarCounters(before, after); moved {
			res.note("%s: %s", name, s)
		}
	}
	if t.proc != nil {
		res.Sidecar = "sidecar processes started by the bench, a fresh one per phase (" + e.cfg.Binary + " serve)"
		if serr := t.proc.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	} else {
		res.Sidecar = t.describe()
	}
	return err
}

// acquire returns the configured sidecar, or starts one with extra
// arguments after Config.SidecarArgs.
func (e *env) acquire(ctx context.Context, extra []string) (*target, error) {
	cfg := e.cfg
	if cfg.HTTPAddr != "" {
		return &target{addrs: addrs{HTTP: cfg.HTTPAddr, NATS: cfg.NATSURL, NATSWS: cfg.NATSWebSocketURL}, pid: cfg.PID, hc: e.hc}, nil
	}
	args := append(append([]string(nil), cfg.SidecarArgs...), extra...)
	p, err := startProcess(ctx, cfg.Binary, args, cfg.KeepSidecarLog)
	if err != nil {
		return nil, err
	}
	e.log.Info("sidecar started", "pid", p.PID(), "http", p.addrs.HTTP, "nats", p.addrs.NATS, "nats_ws", p.addrs.NATSWS)
	return &target{addrs: p.addrs, pid: p.PID(), proc: p, hc: e.hc}, nil
}

// Run runs the configured scenarios one after another and returns their
// report. On error the report holds what was measured before it.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := raiseFileLimit(); err != nil {
		cfg.Logger.Warn("cannot raise the open-file limit", "err", err)
	}
	rep := &Report{Machine: machine(), Started: time.Now().UTC()}
	defer func() { rep.Duration = time.Since(rep.Started).Seconds() }()

	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	run := nuid.Next()[:8] // from the random prefix: threads of one run never meet another's
	prog := newProgress(cfg.Progress)

	for _, sc := range cfg.Scenarios {
		sizes := []int{0}
		if sc == Storm {
			sizes = cfg.Storm.Conns
		}
		for _, size := range sizes {
			e := &env{cfg: cfg, run: run, hc: hc, prog: prog, log: cfg.Logger.With("scenario", string(sc))}
			res, err := runScenario(ctx, e, sc, size)
			for i := range res {
				res[i].Scenario = sc
			}
			rep.Results = append(rep.Results, res...)
			if err != nil {
				return rep, fmt.Errorf("bench %s: %w", sc, err)
			}
		}
	}
	return rep, nil
}

// runScenario runs one scenario (one size of it). Its results are one per
// scenario, but for the storm with StormConfig.Auth, which adds the
// authorized storm's.
func runScenario(ctx context.Context, e *env, sc Scenario, size int) ([]Result, error) {
	one := func(r Result, err error) ([]Result, error) { return []Result{r}, err }
	switch sc {
	case Latency:
		return one(runLatency(ctx, e))
	case FanOut:
		return one(runFanOut(ctx, e))
	case Storm:
		return runStorm(ctx, e, size)
	case Inbound:
		return one(runInbound(ctx, e))
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownScenario, sc)
}

// sidecarCounters describes what the sidecar's own counters moved by, and
// whether any did.
func sidecarCounters(before, after metricSet) (string, bool) {
	names := []string{
		"threadbus_binds_total",
		`threadbus_events_delivered_total{path="live"}`, `threadbus_events_delivered_total{path="replay"}`,
		`threadbus_frames_in_total{kind="thread"}`,
		`threadbus_events_dropped_total{reason="slow_consumer"}`, "threadbus_live_gaps_repaired_total",
		"threadbus_bind_errors_total", "threadbus_jetstream_publish_errors_total",
	}
	moved := false
	for _, n := range names {
		moved = moved || after[n] != before[n]
	}
	d := func(name string) float64 { return after[name] - before[name] }
	return fmt.Sprintf("sidecar counters: %.0f binds, %.0f live + %.0f replayed events delivered, %.0f frames in, "+
		"%.0f events dropped (slow consumer), %.0f live gaps repaired, %.0f bind errors, %.0f publish errors",
		d("threadbus_binds_total"),
		d(`threadbus_events_delivered_total{path="live"}`), d(`threadbus_events_delivered_total{path="replay"}`),
		d(`threadbus_frames_in_total{kind="thread"}`),
		d(`threadbus_events_dropped_total{reason="slow_consumer"}`), d("threadbus_live_gaps_repaired_total"),
		d("threadbus_bind_errors_total"), d("threadbus_jetstream_publish_errors_total")), moved
}
