package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/subjects"
)

// stormTarget is the time the 10,000-connection storm must stay under;
// stormP99Target what one connection of a storm of up to stormP99Conns
// that bind as they connect may wait for its replay, at p99 (issue 12).
const (
	stormTarget      = 2 * time.Second
	stormTargetConns = 10000
	stormP99Target   = 150 * time.Millisecond
	stormP99Conns    = 5000
	boundConnTarget  = 16 << 10 // RSS per idle bound connection
	settleMax        = 15 * time.Second
)

// stormPhase is what one side of a bind storm measured.
type stormPhase struct {
	connect  time.Duration // opening every connection
	storm    time.Duration // first bind request to the last complete replay
	perConn  summary       // one connection's bind request to its complete replay
	complete int           // connections that got their whole replay
	lost     int           // stored events a connection never got
	odd      int           // events out of order, twice, or before thread_bound
	short    int           // thread_bound frames that announced another count
	errors   int           // error frames
	firstErr string        // the first connection's first error frame
	failed   int           // binds answered with an error frame before thread_bound
	refused  int           // connections refused at the handshake (stormSide.failFast)
	refusal  string        // the first refusal

	base, idle, bound    usage     // settled before connecting, connected, bound
	mBase, mIdle, mBound metricSet // the sidecar's metrics at the same points; nil if unavailable
	cpu                  cpuUse    // during the storm
	idleCPU              cpuUse    // while the bound connections idle (the sidecar's pings)
}

func (p stormPhase) perConnRSS(u usage, conns int) float64 {
	return (float64(u.RSS) - float64(p.base.RSS)) / float64(conns)
}

// wrapUp ends a storm's measurement, the same way for both sides: its CPU
// and progress line, its time (to the last complete replay, or to now when
// some never completed), then memory once the connections have idled.
func (p *stormPhase) wrapUp(ctx context.Context, e *env, t *target, m *meter, stop func(), done *tally, base time.Time, start time.Duration, what string) error {
	p.cpu = m.stop(ctx)
	stop()
	if end, ok := done.finishedAt(); ok {
		p.storm = end - start
	} else {
		p.storm = time.Since(base) - start
	}
	im := t.meter(ctx)
	if err := idle(ctx, e, what); err != nil {
		return err
	}
	p.idleCPU = im.stop(ctx)
	var err error
	p.bound, p.mBound, err = settled(ctx, t)
	return err
}

// runStorm stores Events events in each of conns threads, opens conns
// unbound connections, and then has every connection bind its own thread,
// replaying from the start, at once. The baseline does the same with nats.go
// clients through nats-server's WebSocket listener: each subscribes to its
// stormSide is what tells the storm's threadbus phases apart.
type stormSide struct {
	phase string // its name in thread ids and progress lines
	// header returns connection i's handshake headers; nil: none.
	header func(i int) http.Header
	// failFast counts a connection the sidecar refuses at the handshake, or
	// whose bind it answers with an error frame, as failed and stops waiting
	// for it, instead of failing the phase or waiting for the wait timeout.
	failFast bool
}

var plainSide = stormSide{phase: "storm"}

// thread.<tid>.out and reads the stored events with a batch direct get.
// With StormConfig.Auth, the same storm against a sidecar with --auth jwt
// --authz nats runs right after the first, and is the second result.
func runStorm(ctx context.Context, e *env, conns int) ([]Result, error) {
	k := e.cfg.Storm.Events
	layout := "interleaved"
	if e.cfg.Storm.Grouped {
		layout = "grouped"
	}
	if e.cfg.Storm.Connect {
		layout += ", bind on connect"
	}
	if e.cfg.Storm.Restart {
		layout += ", after a restart"
	}
	res := Result{Label: fmt.Sprintf("storm %dconn x %d ev %s", conns, k, layout)}
	boundName := "RSS per bound conn, just bound"
	if e.cfg.Storm.Idle > 0 {
		boundName = fmt.Sprintf("RSS per bound conn, %v idle", e.cfg.Storm.Idle)
	}
	var tb, nb stormPhase
	err := e.phase(ctx, &res, "threadbus", func(t *target) (err error) {
		tb, err = stormThreadbus(ctx, e, t, conns, plainSide)
		return err
	})
	if err != nil {
		return []Result{res}, fmt.Errorf("threadbus phase: %w", err)
	}
	// The authorized storm runs right after the plain one, so that the two
	// meet the same load from the rest of the machine as far as possible.
	var (
		authed  *Result
		authErr error
	)
	if e.cfg.Storm.Auth {
		r, err := runAuthStorm(ctx, e, res.Label, boundName, conns, tb)
		if err != nil {
			authErr = fmt.Errorf("threadbus --auth jwt phase: %w", err)
		}
		authed = &r
	}
	skipped := false
	err = e.phase(ctx, &res, "nats-server ws", func(t *target) (err error) {
		if e.cfg.Storm.NoBaseline {
			res.note("baseline skipped (--no-baseline)")
			skipped = true
			return nil
		}
		if t.NATSWS == "" {
			res.note("no nats-server WebSocket listener given: baseline skipped")
			skipped = true
			return nil
		}
		nb, err = stormNATS(ctx, e, t, conns)
		return err
	})
	if err != nil {
		skipped = true
		err = fmt.Errorf("nats-server WebSocket phase: %w", err)
		res.note("baseline failed: %v", err)
	}

	const natsName = "nats.go over nats-server ws: sub + direct get"
	fig := func(f Figure, v float64) Figure {
		if skipped {
			return f
		}
		return f.withBaseline(natsName, v)
	}
	storm := fig(Figure{Name: "bind storm: all replays complete", Unit: UnitSeconds, Value: tb.storm.Seconds()}, nb.storm.Seconds())
	if conns >= stormTargetConns {
		storm = storm.below(stormTarget.Seconds(), false)
	}
	res.add(storm)
	res.add(fig(Figure{Name: "events lost", Unit: UnitCount, Value: float64(tb.lost)}, float64(nb.lost)).below(0, true))
	res.add(fig(Figure{Name: "RSS per unbound conn", Unit: UnitBytes, Value: tb.perConnRSS(tb.idle, conns)}, nb.perConnRSS(nb.idle, conns)))
	res.add(fig(Figure{Name: boundName, Unit: UnitBytes, Value: tb.perConnRSS(tb.bound, conns)}, nb.perConnRSS(nb.bound, conns)).below(boundConnTarget, true))
	res.add(fig(Figure{Name: "one bind, p50", Unit: UnitSeconds, Value: tb.perConn.P50.Seconds()}, nb.perConn.P50.Seconds()))
	p99 := fig(Figure{Name: "one bind, p99", Unit: UnitSeconds, Value: tb.perConn.P99.Seconds()}, nb.perConn.P99.Seconds())
	if e.cfg.Storm.Connect && conns <= stormP99Conns {
		p99 = p99.below(stormP99Target.Seconds(), true)
	}
	res.add(p99)
	res.add(fig(Figure{Name: "open all conns", Unit: UnitSeconds, Value: tb.connect.Seconds()}, nb.connect.Seconds()))

	res.note("threadbus: %d/%d connections complete, %d events lost, %d out of order, %d thread_bound with another count, %d error frames; storm CPU %s",
		tb.complete, conns, tb.lost, tb.odd, tb.short, tb.errors, tb.cpu)
	if e.cfg.Storm.Idle > 0 {
		res.note("threadbus: CPU while the bound connections idled (liveness pings), %s", tb.idleCPU)
	}
	if tb.firstErr != "" {
		res.note("threadbus: first error frame: %s", tb.firstErr)
	}
	if tb.complete < conns {
		res.note("threadbus: incomplete after the wait timeout (%v): the storm time is that timeout", e.cfg.WaitTimeout)
	}
	res.note("threadbus sidecar RSS: %s before connecting, %s connected, %s bound",
		formatBytes(float64(tb.base.RSS)), formatBytes(float64(tb.idle.RSS)), formatBytes(float64(tb.bound.RSS)))
	if s := memBreakdown(tb.mBase, tb.mIdle, tb.mBound, conns); s != "" {
		res.note("threadbus sidecar, per connection: %s", s)
	}
	if !skipped {
		res.note("nats-server ws: %d/%d clients complete, %d events lost, %d out of order; storm CPU %s",
			nb.complete, conns, nb.lost, nb.odd, nb.cpu)
		if nb.firstErr != "" {
			res.note("nats-server ws: first error: %s", nb.firstErr)
		}
		if nb.complete < conns {
			res.note("nats-server ws: incomplete after the wait timeout (%v)", e.cfg.WaitTimeout)
		}
		res.note("nats-server ws process RSS: %s before connecting, %s connected, %s subscribed and replayed",
			formatBytes(float64(nb.base.RSS)), formatBytes(float64(nb.idle.RSS)), formatBytes(float64(nb.bound.RSS)))
		if s := memBreakdown(nb.mBase, nb.mIdle, nb.mBound, conns); s != "" {
			res.note("nats-server ws process, per client: %s", s)
		}
	}
	if authed != nil {
		return []Result{res, *authed}, errors.Join(authErr, err)
	}
	return []Result{res}, err
}

// storeEvents stores k events in each of n threads, interleaved across
// threads or grouped by thread (StormConfig.Grouped); event j of a thread
// is "n":j.
func storeEvents(ctx context.Context, e *env, ag *agent, n, k int, thread func(i int) string) error {
	var done atomic.Int64
	stop := e.prog.start("storm", func() string { return fmt.Sprintf("%d/%d events stored", done.Load(), n*k) })
	defer stop()
	outs := make([]string, n)
	for i := range n {
		outs[i], _ = subjects.ThreadOut(thread(i))
	}
	return ag.publishAsync(ctx, n*k, func(i int) *nats.Msg {
		done.Add(1)
		if e.cfg.Storm.Grouped {
			return &nats.Msg{Subject: outs[i/k], Data: eventBody(i%k, e.cfg.PayloadBytes)}
		}
		return &nats.Msg{Subject: outs[i%n], Data: eventBody(i/n, e.cfg.PayloadBytes)}
	})
}

// stormThreadbus is the sidecar's side of the storm.
func stormThreadbus(ctx context.Context, e *env, t *target, conns int, side stormSide) (stormPhase, error) {
	var p stormPhase
	k := e.cfg.Storm.Events
	thread := func(i int) string { return e.thread(side.phase, i) }
	ag, err := connectAgent(ctx, t.NATS, "bench-storm-agent")
	if err != nil {
		return p, err
	}
	defer ag.close()
	e.prog.note("%s: storing %d events in each of %d threads", side.phase, k, conns)
	if err := storeEvents(ctx, e, ag, conns, k, thread); err != nil {
		return p, err
	}
	if e.cfg.Storm.Restart {
		if t.proc == nil {
			return p, fmt.Errorf("%w: --restart needs a sidecar the bench starts", ErrConfig)
		}
		e.prog.note("storm: restarting the sidecar")
		np, err := t.proc.restart(ctx)
		if err != nil {
			return p, fmt.Errorf("restart the sidecar: %w", err)
		}
		t.proc, t.pid, t.addrs = np, np.PID(), np.addrs
	}
	if p.base, p.mBase, err = settled(ctx, t); err != nil {
		return p, err
	}

	base := time.Now()
	done := newTally(base, int64(conns))
	// over counts the connections done with: complete, or failed (only
	// waited on with side.failFast).
	over := newTally(base, int64(conns))
	waitOn := done
	if side.failFast {
		waitOn = over
	}
	state := make([]stormConn, conns)
	sentAt := make([]time.Duration, conns) // written before each request, read after the storm
	complete := func(s *stormConn) {
		s.doneAt = time.Since(base)
		done.add(1)
		if !s.failed {
			over.add(1)
		}
	}
	handle := func(i int, data []byte) {
		s := &state[i]
		switch f := parseFrame(data); f.kind {
		case boundFrame:
			s.bound, s.replayed = true, f.replayed
			if k == 0 && s.doneAt == 0 {
				complete(s)
			}
		case eventFrame:
			if !s.bound || f.n != s.next {
				s.odd++
				return
			}
			s.next++
			if s.next == k {
				complete(s)
			}
		case errorFrame:
			if s.errors == 0 {
				s.firstErr = f.code + ": " + f.message
			}
			s.errors++
			if !s.bound && !s.failed && s.doneAt == 0 {
				s.failed = true
				over.add(1)
			}
		}
	}
	dial := dialOptions{header: side.header, keepRefused: side.failFast}
	refusals := func(fl *fleet) {
		p.refused = fl.refused
		if fl.firstRefusal != nil {
			p.refusal = fl.firstRefusal.Error()
		}
		over.add(int64(fl.refused))
	}
	// finish waits for the replays, then measures and tallies the storm
	// the same way whether the connections bound on connect or later.
	finish := func(fl *fleet, m *meter, stop func(), start time.Duration) (stormPhase, error) {
		waitErr := waitFor(ctx, e.cfg.WaitTimeout, waitOn, int64(conns))
		if err := p.wrapUp(ctx, e, t, m, stop, done, base, start, side.phase); err != nil {
			return p, err
		}
		fl.close()
		p.tallyStorm(k, conns, sentAt, state)
		if waitErr != nil {
			e.log.Warn("storm incomplete", "err", waitErr)
		}
		return p, nil
	}
	if e.cfg.Storm.Connect {
		e.prog.note("%s: %d connections connect and bind their threads", side.phase, conns)
		stop := e.prog.start(side.phase, func() string {
			return fmt.Sprintf("%d/%d connections have their replay", done.count(), conns)
		})
		m := t.meter(ctx)
		start := time.Since(base)
		p.idle, p.mIdle = p.base, p.mBase // no unbound phase
		fl, err := openFleet(ctx, e.hc, conns, e.cfg.DialWorkers, e.cfg.WaitTimeout, func(i int) string {
			sentAt[i] = time.Since(base)
			return t.wsURL("thread_id=" + thread(i) + "&since=0")
		}, dial, handle, e.prog, side.phase)
		if err != nil {
			stop()
			return p, err
		}
		defer fl.close()
		p.connect = time.Since(base) - start
		refusals(fl)
		return finish(fl, m, stop, start)
	}
	e.prog.note("%s: opening %d unbound connections", side.phase, conns)
	began := time.Now()
	fl, err := openFleet(ctx, e.hc, conns, e.cfg.DialWorkers, e.cfg.WaitTimeout, func(int) string { return t.wsURL("") },
		dial, handle, e.prog, side.phase)
	if err != nil {
		return p, err
	}
	defer fl.close()
	p.connect = time.Since(began)
	refusals(fl)
	if p.idle, p.mIdle, err = settled(ctx, t); err != nil {
		return p, err
	}

	e.prog.note("%s: %d connections bind their threads at once", side.phase, conns-p.refused)
	stop := e.prog.start(side.phase, func() string {
		return fmt.Sprintf("%d/%d connections have their replay", done.count(), conns)
	})
	m := t.meter(ctx)
	start := time.Since(base)
	err = fl.each(ctx, e.cfg.DialWorkers, func(ctx context.Context, i int) error {
		sentAt[i] = time.Since(base)
		return fl.write(ctx, i, switchFrame(thread(i)))
	})
	if err != nil {
		stop()
		return p, fmt.Errorf("bind requests: %w", err)
	}
	return finish(fl, m, stop, start)
}

// stormConn is one connection's side of a storm, written by its reader
// only, read after close.
type stormConn struct {
	bound    bool
	failed   bool // an error frame before thread_bound: the bind was refused
	replayed int
	next     int // the next event expected
	odd      int
	errors   int
	firstErr string
	doneAt   time.Duration
}

// tallyStorm sums what the connections saw; sentAt[i] is when connection
// i's bind (or dial) began.
func (p *stormPhase) tallyStorm(k, conns int, sentAt []time.Duration, state []stormConn) {
	var per samples
	for i, s := range state[:conns] {
		p.odd += s.odd
		p.errors += s.errors
		if s.failed {
			p.failed++
		}
		if p.firstErr == "" {
			p.firstErr = s.firstErr
		}
		p.lost += k - s.next
		if s.bound && s.replayed != k {
			p.short++
		}
		if s.doneAt != 0 {
			p.complete++
			per = append(per, s.doneAt-sentAt[i])
		}
	}
	p.perConn = summarize(per)
}

// stormNATS is the baseline: nats.go clients through nats-server's
// WebSocket listener, each subscribing to its thread and reading the
// stored events with a batch direct get, all at once.
func stormNATS(ctx context.Context, e *env, t *target, conns int) (stormPhase, error) {
	var p stormPhase
	k := e.cfg.Storm.Events
	thread := func(i int) string { return e.thread("stormnats", i) }
	ag, err := connectAgent(ctx, t.NATS, "bench-storm-agent")
	if err != nil {
		return p, err
	}
	defer ag.close()
	e.prog.note("storm baseline: storing %d events in each of %d threads", k, conns)
	if err := storeEvents(ctx, e, ag, conns, k, thread); err != nil {
		return p, err
	}
	if p.base, p.mBase, err = settled(ctx, t); err != nil {
		return p, err
	}
	e.prog.note("storm baseline: connecting %d nats.go clients to %s", conns, t.NATSWS)
	began := time.Now()
	fl, err := openNATSFleet(ctx, t.NATSWS, conns, e.cfg.DialWorkers, "", nil, e.prog, "storm baseline")
	if err != nil {
		return p, err
	}
	defer fl.close()
	p.connect = time.Since(began)
	if p.idle, p.mIdle, err = settled(ctx, t); err != nil {
		return p, err
	}

	e.prog.note("storm baseline: %d clients subscribe and replay their threads at once", conns)
	base := time.Now()
	done := newTally(base, int64(conns))
	results := make([]natsReplay, conns)
	stop := e.prog.start("storm baseline", func() string {
		return fmt.Sprintf("%d/%d clients have their replay", done.count(), conns)
	})
	m := t.meter(ctx)
	rctx, cancel := context.WithTimeout(ctx, e.cfg.WaitTimeout)
	start := time.Since(base)
	fl.all(func(i int, nc *nats.Conn) {
		results[i] = replayNATS(rctx, nc, thread(i), k, base)
		if results[i].err == nil && results[i].next == k {
			done.add(1)
		}
	})
	cancel()
	if err := p.wrapUp(ctx, e, t, m, stop, done, base, start, "storm baseline"); err != nil {
		return p, err
	}
	fl.close()

	var per samples
	var firstErr error
	for _, r := range results {
		p.odd += r.odd
		p.lost += k - r.next
		if r.err != nil {
			p.errors++
			if firstErr == nil {
				firstErr = r.err
				p.firstErr = r.err.Error()
			}
		}
		if r.err == nil && r.next == k {
			p.complete++
			per = append(per, r.doneAt-r.sentAt)
		}
	}
	p.perConn = summarize(per)
	if firstErr != nil {
		e.log.Warn("storm baseline incomplete", "err", firstErr)
	}
	return p, nil
}

// idle keeps the bound connections idle for StormConfig.Idle.
func idle(ctx context.Context, e *env, label string) error {
	d := e.cfg.Storm.Idle
	if d <= 0 {
		return nil
	}
	began := time.Now()
	stop := e.prog.start(label, func() string {
		return fmt.Sprintf("idle for %v before reading memory, %.0fs left", d, (d - time.Since(began)).Seconds())
	})
	defer stop()
	return sleep(ctx, d)
}

// settled reads the sidecar's settled usage and its metrics.
func settled(ctx context.Context, t *target) (usage, metricSet, error) {
	u, err := t.settledUsage(ctx, settleMax)
	if err != nil {
		return u, nil, err
	}
	m, _ := t.scrape(ctx) // nil when the sidecar has no /metrics
	return u, m, nil
}

// memBreakdown says how the sidecar's memory grew per connection, idle and
// bound: the Go heap's spans in use (live objects and the free slots between
// them), goroutine stacks, heap the runtime holds free but has not returned
// to the OS (heap_idle - heap_released, the part of RSS no object uses), and
// goroutines.
func memBreakdown(base, idle, bound metricSet, conns int) string {
	if base == nil || idle == nil || bound == nil {
		return ""
	}
	const (
		heap     = "go_memstats_heap_inuse_bytes"
		stack    = "go_memstats_stack_inuse_bytes"
		heapIdle = "go_memstats_heap_idle_bytes"
		released = "go_memstats_heap_released_bytes"
		gr       = "go_goroutines"
	)
	if _, ok := base[heap]; !ok {
		return ""
	}
	per := func(m metricSet, name string) float64 { return (m[name] - base[name]) / float64(conns) }
	held := func(m metricSet) float64 {
		return ((m[heapIdle] - m[released]) - (base[heapIdle] - base[released])) / float64(conns)
	}
	return fmt.Sprintf("unbound: heap in use %s, stacks %s, held free %s, %.2f goroutines; bound: heap in use %s, stacks %s, held free %s, %.2f goroutines",
		formatBytes(per(idle, heap)), formatBytes(per(idle, stack)), formatBytes(held(idle)), per(idle, gr),
		formatBytes(per(bound, heap)), formatBytes(per(bound, stack)), formatBytes(held(bound)), per(bound, gr))
}
