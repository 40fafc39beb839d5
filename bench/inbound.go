package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/sidecar"
	"github.com/threadbus/threadbus/subjects"
)

// inboundPhase is what one side of the inbound scenario measured.
type inboundPhase struct {
	frames  int // frames sent
	elapsed time.Duration
	stored  int // frames found in the stream afterwards
	errors  int // error frames the clients got
	cpu     cpuUse
}

func (p inboundPhase) rate() float64 { return perSecond(p.stored, p.elapsed) }

// runInbound has Conns WebSocket clients, each bound to its own thread, send
// Frames frames each as fast as the sidecar takes them; the sidecar stores
// each in JetStream (thread.<tid>.in), waiting for the ack, before it reads
// the connection's next frame. The baseline publishes the same frames from
// one nats.go client with asynchronous JetStream publishing.
func runInbound(ctx context.Context, e *env) (Result, error) {
	cfg := e.cfg.Inbound
	res := Result{Label: fmt.Sprintf("inbound %dconn x %d frames", cfg.Conns, cfg.Frames)}
	var tb, nb inboundPhase
	err := e.phase(ctx, &res, "threadbus", func(t *target) (err error) {
		tb, err = inboundThreadbus(ctx, e, t)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("threadbus phase: %w", err)
	}
	const baseline = "nats.go async JetStream publish, 1 client"
	err = e.phase(ctx, &res, "async publish", func(t *target) (err error) {
		nb, err = inboundNATS(ctx, e, t)
		return err
	})
	rate := Figure{Name: "frames/s stored", Unit: UnitFrames, Value: tb.rate()}
	lost := Figure{Name: "frames lost", Unit: UnitCount, Value: float64(tb.frames - tb.stored)}
	if err != nil {
		err = fmt.Errorf("baseline phase: %w", err)
		res.note("baseline failed: %v", err)
		res.add(rate)
		res.add(lost.below(0, true))
	} else {
		res.add(rate.withBaseline(baseline, nb.rate()))
		res.add(lost.withBaseline(baseline, float64(nb.frames-nb.stored)).below(0, true))
	}
	res.note("threadbus: %d/%d frames stored in %.2fs, %d error frames; CPU %s; sidecar CPU per 1M frames %s",
		tb.stored, tb.frames, tb.elapsed.Seconds(), tb.errors, tb.cpu, perMillion(tb.cpu.Sidecar, tb.stored).Round(time.Millisecond))
	res.note("async publish: %d/%d frames stored in %.2fs; CPU %s; sidecar CPU per 1M frames %s",
		nb.stored, nb.frames, nb.elapsed.Seconds(), nb.cpu, perMillion(nb.cpu.Sidecar, nb.stored).Round(time.Millisecond))
	res.note("each connection's frames are stored one at a time (the sidecar waits for each ack before reading the next frame): throughput grows with connections")
	return res, err
}

// inboundWatch subscribes to thread.*.in and counts the frames of one
// phase's threads as the server receives them. A connection's next frame
// is published only once the previous one is acknowledged, so the count
// trails the stored frames by at most one per connection.
func inboundWatch(ctx context.Context, url, prefix string, got *tally) (*subscriber, error) {
	return subscribe(ctx, url, "bench-inbound-watch", subjects.ThreadInAll, func(m *nats.Msg) {
		if strings.HasPrefix(m.Subject, prefix) {
			got.add(1)
		}
	})
}

func inboundThreadbus(ctx context.Context, e *env, t *target) (inboundPhase, error) {
	cfg := e.cfg.Inbound
	p := inboundPhase{frames: cfg.Conns * cfg.Frames}
	thread := func(i int) string { return e.thread("in", i) }
	prefix, _ := subjects.ThreadIn(thread(0))
	prefix = strings.TrimSuffix(prefix, "0.in")

	base := time.Now()
	got := newTally(base, int64(p.frames))
	watch, err := inboundWatch(ctx, t.NATS, prefix, got)
	if err != nil {
		return p, err
	}
	defer watch.close()

	bound := newTally(base, int64(cfg.Conns))
	errs := make([]int, cfg.Conns) // written by each reader, read after close
	fl, err := openFleet(ctx, e.hc, cfg.Conns, e.cfg.DialWorkers, e.cfg.WaitTimeout,
		func(i int) string { return t.wsURL("thread_id=" + thread(i)) }, dialOptions{},
		func(i int, data []byte) {
			switch parseFrame(data).kind {
			case boundFrame:
				bound.add(1)
			case errorFrame:
				errs[i]++
			}
		}, e.prog, "inbound")
	if err != nil {
		return p, err
	}
	defer fl.close()
	if err := waitFor(ctx, e.cfg.WaitTimeout, bound, int64(cfg.Conns)); err != nil {
		return p, fmt.Errorf("%d of %d connections bound: %w", bound.count(), cfg.Conns, err)
	}

	frames := make([][]byte, cfg.Conns*cfg.Frames)
	for i := range cfg.Conns {
		for n := range cfg.Frames {
			frames[i*cfg.Frames+n] = clientFrame(n, thread(i), e.cfg.PayloadBytes)
		}
	}
	e.prog.note("inbound: %d connections send %d frames each", cfg.Conns, cfg.Frames)
	stop := e.prog.start("inbound", func() string { return fmt.Sprintf("%d/%d frames in", got.count(), p.frames) })
	m := t.meter(ctx)
	start := time.Since(base)
	wctx, cancel := context.WithTimeout(ctx, e.cfg.WaitTimeout)
	err = fl.each(wctx, cfg.Conns, func(ctx context.Context, i int) error {
		for n := range cfg.Frames {
			if err := fl.write(ctx, i, frames[i*cfg.Frames+n]); err != nil {
				return err
			}
		}
		return nil
	})
	cancel()
	if err != nil {
		stop()
		return p, fmt.Errorf("sending frames: %w", err)
	}
	waitErr := waitFor(ctx, e.cfg.WaitTimeout, got, int64(p.frames))
	p.cpu = m.stop(ctx)
	stop()
	if end, ok := got.finishedAt(); ok {
		p.elapsed = end - start
	} else {
		p.elapsed = time.Since(base) - start
	}
	fl.close()
	for _, n := range errs {
		p.errors += n
	}
	if p.stored, err = storedFrames(ctx, t, cfg.Conns, thread); err != nil {
		return p, err
	}
	if waitErr != nil {
		e.log.Warn("inbound incomplete", "err", waitErr)
	}
	return p, nil
}

func inboundNATS(ctx context.Context, e *env, t *target) (inboundPhase, error) {
	cfg := e.cfg.Inbound
	p := inboundPhase{frames: cfg.Conns * cfg.Frames}
	thread := func(i int) string { return e.thread("innats", i) }
	prefix, _ := subjects.ThreadIn(thread(0))
	prefix = strings.TrimSuffix(prefix, "0.in")

	base := time.Now()
	got := newTally(base, int64(p.frames))
	watch, err := inboundWatch(ctx, t.NATS, prefix, got) // the same load on the server as in the other phase
	if err != nil {
		return p, err
	}
	defer watch.close()
	ag, err := connectAgent(ctx, t.NATS, "bench-inbound-publisher")
	if err != nil {
		return p, err
	}
	defer ag.close()

	// The same frames, with the headers the sidecar sets.
	msgs := make([]*nats.Msg, p.frames)
	for i := range cfg.Conns {
		subj, _ := subjects.ThreadIn(thread(i))
		hdr := nats.Header{sidecar.HeaderConn: {fmt.Sprintf("benchconn%d", i)}, sidecar.HeaderSidecar: {"bench"}}
		for n := range cfg.Frames {
			// Interleaved across threads, as frames of many connections arrive.
			msgs[n*cfg.Conns+i] = &nats.Msg{Subject: subj, Header: hdr, Data: clientFrame(n, thread(i), e.cfg.PayloadBytes)}
		}
	}
	e.prog.note("inbound baseline: one nats.go client publishes %d frames asynchronously", p.frames)
	stop := e.prog.start("inbound baseline", func() string { return fmt.Sprintf("%d/%d frames in", got.count(), p.frames) })
	m := t.meter(ctx)
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, e.cfg.WaitTimeout)
	err = ag.publishAsync(pctx, p.frames, func(i int) *nats.Msg { return msgs[i] })
	cancel()
	p.elapsed = time.Since(start)
	p.cpu = m.stop(ctx)
	stop()
	if err != nil {
		return p, err
	}
	if p.stored, err = storedFrames(ctx, t, cfg.Conns, thread); err != nil {
		return p, err
	}
	return p, nil
}

// storedFrames counts the messages the stream holds on thread.<tid>.in of
// the phase's threads.
func storedFrames(ctx context.Context, t *target, conns int, thread func(i int) string) (int, error) {
	nc, err := nats.Connect(t.NATS, nats.Name("bench-inbound-check"))
	if err != nil {
		return 0, fmt.Errorf("connect to nats %s: %w", t.NATS, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	st, err := js.Stream(ctx, subjects.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", subjects.Stream, err)
	}
	total := 0
	for i := range conns {
		subj, _ := subjects.ThreadIn(thread(i))
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return total, fmt.Errorf("count %s: %w", subj, err)
		}
		total += int(info.State.Subjects[subj])
	}
	return total, nil
}
