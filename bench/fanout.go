package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/subjects"
)

// fanOutWarmup is how many events each fan-out phase delivers before the
// measured ones (connections' buffers and goroutine stacks grow there).
const fanOutWarmup = 50

// fanOutPhase is what one side of the fan-out measured.
type fanOutPhase struct {
	delivered int64 // measured events received, all receivers together
	elapsed   time.Duration
	lost      int64 // measured events some receiver never got
	disorder  int64 // events received out of publish order, or twice
	cpu       cpuUse
}

func (p fanOutPhase) rate() float64 { return perSecond(int(p.delivered), p.elapsed) }

// runFanOut delivers the same events of one thread to many receivers:
// WebSocket connections bound to it through the sidecar, then as many
// nats.go clients connected through nats-server's WebSocket listener and
// subscribed to thread.<tid>.out. The publisher stays a window of events
// ahead of the average receiver, so that neither side's per-connection
// queues overflow: the figure is the delivery rate both can sustain.
func runFanOut(ctx context.Context, e *env) (Result, error) {
	cfg := e.cfg.FanOut
	res := Result{Label: fmt.Sprintf("fanout %dconn x %d ev", cfg.Conns, cfg.Events)}
	tid := e.thread("fan", 0)
	out, _ := subjects.ThreadOut(tid)

	var tb, nb fanOutPhase
	err := e.phase(ctx, &res, "threadbus", func(t *target) (err error) {
		e.prog.note("fanout: %d WebSocket connections to the sidecar bound to %s, %d events", cfg.Conns, tid, cfg.Events)
		tb, err = fanOutThreadbus(ctx, e, t, tid)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("threadbus phase: %w", err)
	}
	fig := Figure{Name: "events/s delivered", Unit: UnitEvents, Value: tb.rate()}
	skipped := false
	err = e.phase(ctx, &res, "nats-server ws", func(t *target) (err error) {
		if t.NATSWS == "" {
			res.note("no nats-server WebSocket listener given: baseline skipped")
			skipped = true
			return nil
		}
		e.prog.note("fanout: %d nats.go clients through %s subscribed to %s, %d events", cfg.Conns, t.NATSWS, out, cfg.Events)
		nb, err = fanOutNATS(ctx, e, t, out)
		return err
	})
	if err != nil {
		err = fmt.Errorf("nats-server WebSocket phase: %w", err)
		res.note("baseline failed: %v", err)
		skipped = true
	}
	if skipped {
		res.add(fig)
	} else {
		res.add(fig.withBaseline("nats.go over nats-server ws listener", nb.rate()).ratioAtLeast(1))
	}
	res.add(Figure{Name: "events lost", Unit: UnitCount, Value: float64(tb.lost)}.withBaseline("nats.go over nats-server ws listener", float64(nb.lost)).below(0, true))
	res.note("threadbus: %d events to %d connections in %.2fs; CPU %s; sidecar CPU per 1M deliveries %s",
		cfg.Events, cfg.Conns, tb.elapsed.Seconds(), tb.cpu, perMillion(tb.cpu.Sidecar, int(tb.delivered)).Round(time.Millisecond))
	if !skipped {
		res.note("nats-server ws: %d events to %d clients in %.2fs; CPU %s; sidecar CPU per 1M deliveries %s",
			cfg.Events, cfg.Conns, nb.elapsed.Seconds(), nb.cpu, perMillion(nb.cpu.Sidecar, int(nb.delivered)).Round(time.Millisecond))
	}
	if tb.disorder+nb.disorder > 0 {
		res.note("events out of order or duplicated: threadbus %d, nats %d", tb.disorder, nb.disorder)
	}
	return res, err
}

// fanOutThreadbus measures the sidecar's side.
func fanOutThreadbus(ctx context.Context, e *env, t *target, tid string) (fanOutPhase, error) {
	cfg := e.cfg.FanOut
	ag, err := connectAgent(ctx, t.NATS, "bench-fanout-agent")
	if err != nil {
		return fanOutPhase{}, err
	}
	defer ag.close()
	base := time.Now()
	total := fanOutWarmup + cfg.Events
	got := newTally(base, int64(total*cfg.Conns))
	bound := newTally(base, int64(cfg.Conns))
	// Per connection, written by its reader only, read after close.
	type recvState struct{ count, next, disorder int }
	state := make([]recvState, cfg.Conns)
	conns, err := openFleet(ctx, e.hc, cfg.Conns, e.cfg.DialWorkers, e.cfg.WaitTimeout,
		func(int) string { return t.wsURL("thread_id=" + tid) }, dialOptions{},
		func(i int, data []byte) {
			f := parseFrame(data)
			switch f.kind {
			case boundFrame:
				bound.add(1)
			case eventFrame:
				s := &state[i]
				if f.n != s.next {
					s.disorder++
				}
				s.next = f.n + 1
				s.count++
				got.add(1)
			}
		}, e.prog, "fanout threadbus")
	if err != nil {
		return fanOutPhase{}, err
	}
	defer conns.close()
	if err := waitFor(ctx, e.cfg.WaitTimeout, bound, int64(cfg.Conns)); err != nil {
		return fanOutPhase{}, fmt.Errorf("%d of %d connections bound: %w", bound.count(), cfg.Conns, err)
	}
	out, _ := subjects.ThreadOut(tid)
	p, err := fanOutPublish(ctx, e, t, ag, out, got, "fanout threadbus")
	conns.close()
	if err != nil {
		return p, err
	}
	for _, s := range state {
		p.disorder += int64(s.disorder)
	}
	// The next phase starts with the sidecar's connections gone.
	if err := t.waitConnsClosed(ctx, 0, e.cfg.WaitTimeout); err != nil {
		return p, err
	}
	return p, nil
}

// fanOutNATS measures the baseline: nats.go clients through nats-server's
// WebSocket listener, in the sidecar's process.
func fanOutNATS(ctx context.Context, e *env, t *target, out string) (fanOutPhase, error) {
	cfg := e.cfg.FanOut
	ag, err := connectAgent(ctx, t.NATS, "bench-fanout-agent")
	if err != nil {
		return fanOutPhase{}, err
	}
	defer ag.close()
	base := time.Now()
	total := fanOutWarmup + cfg.Events
	got := newTally(base, int64(total*cfg.Conns))
	// Per client, written by its subscription's goroutine while reading
	// may overlap the end of the run: atomics.
	type recvState struct{ next, disorder atomic.Int64 }
	state := make([]recvState, cfg.Conns)
	clients, err := openNATSFleet(ctx, t.NATSWS, cfg.Conns, e.cfg.DialWorkers, out, func(i int, m *nats.Msg) {
		s := &state[i]
		n := int64(bodyN(m.Data))
		if n != s.next.Load() {
			s.disorder.Add(1)
		}
		s.next.Store(n + 1)
		got.add(1)
	}, e.prog, "fanout nats-server ws")
	if err != nil {
		return fanOutPhase{}, err
	}
	defer clients.close()
	p, err := fanOutPublish(ctx, e, t, ag, out, got, "fanout nats-server ws")
	clients.close()
	for i := range state {
		p.disorder += state[i].disorder.Load()
	}
	return p, err
}

// fanOutPublish publishes the warm-up events and then the measured ones,
// keeping at most Window events ahead of the average receiver, and waits
// until every receiver has them all.
func fanOutPublish(ctx context.Context, e *env, t *target, ag *agent, subject string, got *tally, label string) (fanOutPhase, error) {
	cfg := e.cfg.FanOut
	conns := int64(cfg.Conns)
	total := fanOutWarmup + cfg.Events
	publish := func(from, to int) error {
		for n := from; n < to; n++ {
			if n >= cfg.Window {
				// The average receiver has all but the last Window events.
				if err := waitFor(ctx, e.cfg.WaitTimeout, got, int64(n-cfg.Window+1)*conns); err != nil {
					return err
				}
			}
			if _, err := ag.js.PublishAsync(subject, eventBody(n, e.cfg.PayloadBytes), jetstream.WithStallWait(asyncStallWait)); err != nil {
				return fmt.Errorf("publish event %d: %w", n, err)
			}
		}
		return nil
	}
	if err := publish(0, fanOutWarmup); err != nil {
		return fanOutPhase{}, err
	}
	if err := waitFor(ctx, e.cfg.WaitTimeout, got, fanOutWarmup*conns); err != nil {
		return fanOutPhase{}, fmt.Errorf("warm-up: %w", err)
	}

	stop := e.prog.start(label, func() string {
		return fmt.Sprintf("%d/%d deliveries", got.count()-fanOutWarmup*conns, int64(cfg.Events)*conns)
	})
	defer stop()
	m := t.meter(ctx)
	start := time.Since(got.base)
	if err := publish(fanOutWarmup, total); err != nil {
		return fanOutPhase{}, err
	}
	waitErr := waitFor(ctx, e.cfg.WaitTimeout, got, got.final)
	p := fanOutPhase{cpu: m.stop(ctx)}
	p.delivered = got.count() - fanOutWarmup*conns
	p.lost = int64(cfg.Events)*conns - p.delivered
	if end, ok := got.finishedAt(); ok {
		p.elapsed = end - start
	} else {
		p.elapsed = time.Since(got.base) - start
	}
	if waitErr != nil && p.lost == 0 {
		return p, waitErr
	}
	return p, nil
}
