package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/subjects"
)

// runLatency publishes events to one thread at a fixed rate, each with
// JetStream waiting for its ack, and times each from the publish call until
// it is received: by WebSocket clients bound to the thread, and by two plain
// NATS subscribers, on threadbus.live.<tid> (the stored event, where the
// sidecar takes it from) and on thread.<tid>.out (the published message,
// before storage). All receive the same events at the same time.
func runLatency(ctx context.Context, e *env) (Result, error) {
	cfg := e.cfg.Latency
	res := Result{Label: fmt.Sprintf("latency %d ev/s %v %dconn", cfg.Rate, cfg.Duration, cfg.Conns)}
	err := e.phase(ctx, &res, "latency", func(t *target) error { return latency(ctx, e, t, &res) })
	return res, err
}

func latency(ctx context.Context, e *env, t *target, res *Result) error {
	cfg := e.cfg.Latency
	tid := e.thread("lat", 0)
	warm := int(cfg.Warmup.Seconds() * float64(cfg.Rate))
	total := warm + max(1, int(cfg.Duration.Seconds()*float64(cfg.Rate)))
	base := time.Now()

	// Receivers 0..Conns-1 are WebSocket connections, then the live and
	// the core subscriber. recv[r][n] is when r got event n (time since
	// base), 0 until then; each row is written by its receiver's goroutine
	// only and read once those have ended.
	nrecv := cfg.Conns + 2
	liveR, coreR := cfg.Conns, cfg.Conns+1
	recv := make([][]time.Duration, nrecv)
	odd := make([]int, nrecv) // events numbered outside the run, or twice
	for r := range recv {
		recv[r] = make([]time.Duration, total)
	}
	got := newTally(base, int64(total*nrecv))
	record := func(r, n int) {
		now := time.Since(base)
		if n < 0 || n >= total || recv[r][n] != 0 {
			odd[r]++
			return
		}
		recv[r][n] = now
		got.add(1)
	}

	bound := newTally(base, int64(cfg.Conns))
	conns, err := openFleet(ctx, e.hc, cfg.Conns, e.cfg.DialWorkers, e.cfg.WaitTimeout,
		func(int) string { return t.wsURL("thread_id=" + tid) }, dialOptions{},
		func(i int, data []byte) {
			switch f := parseFrame(data); f.kind {
			case eventFrame:
				record(i, f.n)
			case boundFrame:
				bound.add(1)
			}
		}, e.prog, "latency")
	if err != nil {
		return err
	}
	defer conns.close()
	if err := waitFor(ctx, e.cfg.WaitTimeout, bound, int64(cfg.Conns)); err != nil {
		return fmt.Errorf("%d of %d connections bound: %w", bound.count(), cfg.Conns, err)
	}

	live, _ := subjects.Live(tid)
	out, _ := subjects.ThreadOut(tid)
	liveSub, err := subscribe(ctx, t.NATS, "bench-latency-live", live, func(m *nats.Msg) { record(liveR, bodyN(m.Data)) })
	if err != nil {
		return err
	}
	defer liveSub.close()
	coreSub, err := subscribe(ctx, t.NATS, "bench-latency-core", out, func(m *nats.Msg) { record(coreR, bodyN(m.Data)) })
	if err != nil {
		return err
	}
	defer coreSub.close()

	ag, err := connectAgent(ctx, t.NATS, "bench-latency-agent")
	if err != nil {
		return err
	}
	defer ag.close()

	e.prog.note("latency: %d events at %d/s to %s (%d warm-up), %d WebSocket connection(s)", total, cfg.Rate, out, warm, cfg.Conns)
	sent := make([]time.Duration, total)
	acks := make(samples, 0, total)
	var lag time.Duration // how far the publisher fell behind its schedule
	published := 0
	stop := e.prog.start("latency", func() string {
		return fmt.Sprintf("%d/%d receipts", got.count(), got.final)
	})
	fl := startFlood(ctx, e, t, cfg.Flood)
	m := t.meter(ctx)
	interval := time.Second / time.Duration(cfg.Rate)
	start := time.Now()
	for n := range total {
		due := start.Add(time.Duration(n) * interval)
		if d := time.Until(due); d > 0 {
			if err := sleep(ctx, d); err != nil {
				stop()
				return err
			}
		} else {
			lag = max(lag, -d)
		}
		body := eventBody(n, e.cfg.PayloadBytes)
		t0 := time.Since(base)
		if _, err := ag.js.Publish(ctx, out, body); err != nil {
			stop()
			return fmt.Errorf("publish event %d: %w", n, err)
		}
		sent[n] = t0
		published++
		if n >= warm {
			acks = append(acks, time.Since(base)-t0)
		}
	}
	waitErr := waitFor(ctx, e.cfg.WaitTimeout, got, got.final)
	use := m.stop(ctx)
	stop()
	fl.stop()
	if cfg.Flood > 0 {
		res.note("flood: %d connections sent %d frames beside the measured one; the sidecar closed %d of them",
			fl.conns.Load(), fl.sent.Load(), fl.shut.Load())
	}

	// Every receiver has stopped before its row is read.
	conns.close()
	liveSub.close()
	coreSub.close()

	lat := make([]samples, nrecv)
	lost := make([]int, nrecv)
	for r := range nrecv {
		for n := warm; n < total; n++ {
			if recv[r][n] == 0 {
				lost[r]++
				continue
			}
			lat[r] = append(lat[r], recv[r][n]-sent[n])
		}
	}
	var wsLat samples
	wsLost, wsOdd := 0, 0
	for r := range cfg.Conns {
		wsLat = append(wsLat, lat[r]...)
		wsLost += lost[r]
		wsOdd += odd[r]
	}
	ws, lv, co, ack := summarize(wsLat), summarize(lat[liveR]), summarize(lat[coreR]), summarize(acks)
	liveName := "nats.go sub " + live
	coreName := "nats.go sub " + out

	sec := func(d time.Duration) float64 { return d.Seconds() }
	res.add(Figure{Name: "p50 publish to frame", Unit: UnitSeconds, Value: sec(ws.P50)}.withBaseline(liveName, sec(lv.P50)))
	res.add(Figure{Name: "p99 publish to frame", Unit: UnitSeconds, Value: sec(ws.P99)}.withBaseline(liveName, sec(lv.P99)).ratioAtMost(2))
	res.add(Figure{Name: "p99.9 publish to frame", Unit: UnitSeconds, Value: sec(ws.P999)}.withBaseline(liveName, sec(lv.P999)))
	res.add(Figure{Name: "max publish to frame", Unit: UnitSeconds, Value: sec(ws.Max)}.withBaseline(liveName, sec(lv.Max)))
	res.add(Figure{Name: "p50 vs core sub", Unit: UnitSeconds, Value: sec(ws.P50)}.withBaseline(coreName, sec(co.P50)))
	res.add(Figure{Name: "p99 vs core sub", Unit: UnitSeconds, Value: sec(ws.P99)}.withBaseline(coreName, sec(co.P99)))
	res.add(Figure{Name: "p99.9 vs core sub", Unit: UnitSeconds, Value: sec(ws.P999)}.withBaseline(coreName, sec(co.P999)))
	res.add(Figure{Name: "events lost", Unit: UnitCount, Value: float64(wsLost)}.withBaseline(liveName, float64(lost[liveR])).below(0, true))
	res.note("%d events measured per receiver after %d warm-up events; JetStream publish ack p50 %s p99 %s p99.9 %s",
		total-warm, warm, ack.P50, ack.P99, ack.P999)
	res.note("the live subscriber gets the event once stored, as the sidecar does; the core subscriber gets the published message before it is stored")
	res.note("publisher fell behind its schedule by at most %s; CPU %s", lag.Round(time.Microsecond), use)
	if wsOdd+odd[liveR]+odd[coreR] > 0 {
		res.note("duplicate or unknown events: %d WebSocket, %d live, %d core", wsOdd, odd[liveR], odd[coreR])
	}
	if lost[coreR] > 0 {
		res.note("core subscriber lost %d events", lost[coreR])
	}
	if waitErr != nil {
		res.note("not every event arrived within %v: %v", e.cfg.WaitTimeout, waitErr)
	}
	return nil
}

// waitFor waits until t counts want, at most timeout.
func waitFor(ctx context.Context, timeout time.Duration, t *tally, want int64) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := t.wait(ctx, want); err != nil {
		return fmt.Errorf("%w: %d of %d after %v", ErrIncomplete, t.count(), want, timeout)
	}
	return nil
}

// subscriber is a plain NATS subscriber on its own connection. Its messages
// are handled on a goroutine it owns, which close waits for.
type subscriber struct {
	nc   *nats.Conn
	sub  *nats.Subscription
	msgs chan *nats.Msg
	quit chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func subscribe(ctx context.Context, url, name, subject string, handle func(*nats.Msg)) (*subscriber, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.Timeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	s := &subscriber{nc: nc, msgs: make(chan *nats.Msg, 65536), quit: make(chan struct{})}
	if s.sub, err = nc.ChanSubscribe(subject, s.msgs); err == nil {
		err = nc.FlushTimeout(10 * time.Second)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	s.wg.Go(func() {
		for {
			select {
			case m := <-s.msgs:
				handle(m)
			case <-s.quit:
				return
			}
		}
	})
	return s, nil
}

// close ends the subscription and waits for its goroutine. It is idempotent.
func (s *subscriber) close() {
	s.once.Do(func() {
		s.nc.Close()
		close(s.quit)
		s.wg.Wait()
	})
}
