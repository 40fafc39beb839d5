package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/threadbus/threadbus/subjects"
)

// asyncMaxPending bounds the unacknowledged asynchronous publishes of an
// agent; a publish waits up to asyncStallWait for room (nats.go's default,
// 200ms, fails on a loaded machine).
const (
	asyncMaxPending = 4096
	asyncStallWait  = 30 * time.Second
)

// agent is a NATS client of the bench that publishes with JetStream, as an
// agent or the legacy backend would.
type agent struct {
	nc        *nats.Conn
	js        jetstream.JetStream
	asyncErrs atomic.Int64 // asynchronous publishes that failed

	mu       sync.Mutex
	firstErr error // the first of them
}

func connectAgent(ctx context.Context, url, name string) (*agent, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.Timeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	a := &agent{nc: nc}
	a.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(asyncMaxPending),
		jetstream.WithPublishAsyncTimeout(30*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			a.asyncErrs.Add(1)
			a.mu.Lock()
			if a.firstErr == nil {
				a.firstErr = fmt.Errorf("publish to %s: %w", m.Subject, err)
			}
			a.mu.Unlock()
		}))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if _, err := a.js.Stream(ctx, subjects.Stream); err != nil {
		nc.Close()
		return nil, fmt.Errorf("stream %s (is a sidecar running on %s?): %w", subjects.Stream, url, err)
	}
	return a, nil
}

func (a *agent) close() { a.nc.Close() }

// publishAsync publishes n messages with JetStream without waiting for each
// ack, then waits for them all; it fails when any was not acknowledged.
func (a *agent) publishAsync(ctx context.Context, n int, msg func(i int) *nats.Msg) error {
	before := a.asyncErrs.Load()
	stall := jetstream.WithStallWait(asyncStallWait)
	for i := range n {
		if _, err := a.js.PublishMsgAsync(msg(i), stall); err != nil {
			return fmt.Errorf("publish %d of %d: %w", i+1, n, err)
		}
	}
	select {
	case <-a.js.PublishAsyncComplete():
	case <-ctx.Done():
		return fmt.Errorf("waiting for %d acks: %w", a.js.PublishAsyncPending(), ctx.Err())
	}
	if failed := a.asyncErrs.Load() - before; failed > 0 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return fmt.Errorf("%d of %d publishes not acknowledged, first: %w", failed, n, a.firstErr)
	}
	return nil
}

// natsFleet is a set of nats.go clients, each subscribed to one subject.
type natsFleet struct {
	conns  []*nats.Conn
	opened atomic.Int64
	once   sync.Once
}

// natsHandler receives each message client i gets, on the subscription's
// own goroutine.
type natsHandler func(i int, m *nats.Msg)

// openNATSFleet connects n clients to url, workers at a time, and subscribes
// each to subject unless it is empty. nats.go dials ws:// URLs over WebSocket.
func openNATSFleet(ctx context.Context, url string, n, workers int, subject string, handle natsHandler, prog *progress, label string) (*natsFleet, error) {
	f := &natsFleet{conns: make([]*nats.Conn, n)}
	stop := prog.start(label, func() string {
		return fmt.Sprintf("%d/%d nats clients connected", f.opened.Load(), n)
	})
	defer stop()
	var (
		next     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				nc, err := nats.Connect(url, nats.Name(fmt.Sprintf("bench-%d", i)), nats.Timeout(10*time.Second), nats.NoReconnect(),
					nats.SyncQueueLen(1024)) // a direct get reads into a sync subscription: 8 KiB, not 512
				if err == nil {
					f.conns[i] = nc
					if subject != "" {
						_, err = nc.Subscribe(subject, func(m *nats.Msg) { handle(i, m) })
					}
				}
				if err == nil {
					err = nc.FlushTimeout(10 * time.Second) // the server has the subscription
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("nats client %d of %d on %s: %w", i+1, n, url, err); cancel() })
					return
				}
				f.opened.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		f.close()
		return nil, firstErr
	}
	return f, nil
}

// all runs fn for every client at once, one goroutine each, and waits.
func (f *natsFleet) all(fn func(i int, nc *nats.Conn)) {
	var wg sync.WaitGroup
	for i, nc := range f.conns {
		wg.Go(func() { fn(i, nc) })
	}
	wg.Wait()
}

// natsReplay is what one baseline client's replay got.
type natsReplay struct {
	sentAt, doneAt time.Duration // since the storm's base time
	next           int           // the next event expected: all before it arrived in order
	odd            int           // events out of order
	err            error
}

// replayNATS does what a browser speaking NATS would do to bind a thread:
// subscribe to its live events, then read its k stored ones with a batch
// direct get.
func replayNATS(ctx context.Context, nc *nats.Conn, tid string, k int, base time.Time) natsReplay {
	r := natsReplay{sentAt: time.Since(base)}
	out, _ := subjects.ThreadOut(tid)
	if _, r.err = nc.Subscribe(out, func(*nats.Msg) {}); r.err != nil {
		return r
	}
	js, err := jetstream.New(nc)
	if err != nil {
		r.err = err
		return r
	}
	msgs, err := jetstreamext.GetBatch(ctx, js, subjects.Stream, k, jetstreamext.GetBatchSubject(out))
	if err != nil {
		r.err = fmt.Errorf("direct get %s: %w", out, err)
		return r
	}
	for m, err := range msgs {
		if err != nil {
			r.err = fmt.Errorf("direct get %s: %w", out, err)
			break
		}
		if bodyN(m.Data) == r.next {
			r.next++
		} else {
			r.odd++
		}
	}
	r.doneAt = time.Since(base)
	return r
}

// close closes every client; nats.go waits for their subscription goroutines.
func (f *natsFleet) close() {
	f.once.Do(func() {
		var wg sync.WaitGroup
		for _, nc := range f.conns {
			if nc != nil {
				wg.Go(nc.Close)
			}
		}
		wg.Wait()
	})
}
