package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/subjects"
)

// syncQueueLen sizes the channel of a synchronous subscription: history and
// scan reads (natsext.RequestMany) make one per read, and a batch must fit
// (the default, 65536 slots, is 512 KiB per read).
const syncQueueLen = 2 * scanBatch

// Config configures a Bus. The zero value of each field means its documented
// default, except URL, which is required.
type Config struct {
	// URL is the NATS server or cluster to connect to, comma-separated.
	URL string
	// Name is the NATS client connection name. By default, "threadbus".
	Name string
	// Retention is how long the THREADS stream keeps messages. By default,
	// DefaultRetention (24h).
	Retention time.Duration
	// Replicas of the THREADS stream and the bindings bucket when this
	// sidecar creates them; an existing stream keeps its own (see the
	// ownership rule in stream.go). By default, 3 when the NATS server is
	// one of a cluster of 3 or more, else 1.
	Replicas int
	// MaxBytes bounds the THREADS stream's size; the oldest messages are
	// discarded beyond it. By default, DefaultMaxBytes (8 GiB); negative:
	// no limit.
	MaxBytes int64
	// MaxMsgsPerSubject bounds the messages kept per thread and direction
	// (thread.<tid>.in, thread.<tid>.out); the thread's oldest are discarded
	// beyond it. By default, DefaultMaxMsgsPerSubject (10,000); negative: no
	// limit.
	MaxMsgsPerSubject int64
	// RegistryTTL is how long a binding stays in the registry after its
	// sidecar last refreshed it, which bounds how long the bindings of a
	// sidecar that died remain visible. By default, DefaultRegistryTTL (60s).
	RegistryTTL time.Duration
	// Shards is the number of goroutines that dispatch live events; a thread
	// always goes to the same one. By default, 4 per GOMAXPROCS.
	Shards int
	// RecentBytes bounds the memory of the recent window, which answers
	// replays of recent events without reading the stream (recent.go).
	// By default, DefaultRecentBytes (64 MiB); negative turns it off.
	RecentBytes int
	// RecentSpan is how far back the recent window's warm-up reads the
	// stream at start: the sidecar's replay grace. By default, 30s.
	RecentSpan time.Duration
	// Logger receives the bus's logs. By default, slog.Default().
	Logger *slog.Logger
	// Options are appended to the NATS connection options.
	Options []nats.Option
}

// Bus is a connection to NATS with the THREADS stream and the live feeds of
// locally bound threads. Its methods are safe for concurrent use.
type Bus struct {
	cfg    Config
	log    *slog.Logger
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	epoch  atomic.Pointer[string]
	// streamErr is why THREADS cannot be used now (nil: it can), for Ready.
	streamErr atomic.Pointer[error]
	hub       *hub
	scan      *scanner
	recent    *recent
	bounds    boundsReader
	last      lastSeqReader
	reg       *registry

	// Background reads shared by callers (scans, stream bounds) run on
	// goroutines under bg, which Close cancels and waits for.
	bg       context.Context
	bgCancel context.CancelFunc
	bgMu     sync.Mutex
	bgDone   bool
	bgWG     sync.WaitGroup

	checkMu sync.Mutex // serialises checkStream

	outageMu sync.Mutex
	outage   *time.Timer // runs while disconnected: fails every feed at OutageBound

	closed   chan struct{} // closed by the NATS closed handler
	stopOnce sync.Once
	stopErr  error
}

// Open connects to NATS, creates or updates the THREADS stream and starts
// the live dispatchers. Close releases all of it.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	if cfg.URL == "" {
		return nil, errors.New("bus: no NATS URL")
	}
	if cfg.Name == "" {
		cfg.Name = "threadbus"
	}
	if cfg.Shards <= 0 {
		cfg.Shards = 4 * runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RecentBytes == 0 {
		cfg.RecentBytes = DefaultRecentBytes
	}
	if cfg.RecentSpan <= 0 {
		cfg.RecentSpan = defaultRecentSpan
	}
	b := &Bus{cfg: cfg, log: cfg.Logger, closed: make(chan struct{})}
	b.hub = newHub(b, cfg.Shards) // before connecting: the handlers below use it
	b.bg, b.bgCancel = context.WithCancel(context.Background())
	b.bounds.b = b
	b.last.b = b
	b.scan = newScanner(b)
	b.recent = newRecent(b, cfg.RecentBytes, cfg.RecentSpan)
	opts := []nats.Option{
		nats.Name(cfg.Name),
		// The sidecar never consumes what it publishes itself.
		nats.NoEcho(),
		nats.MaxReconnects(-1),
		nats.SyncQueueLen(syncQueueLen),
		nats.ClosedHandler(func(*nats.Conn) { close(b.closed) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: closed on purpose
				b.log.Warn("nats disconnected", "err", err)
				b.outageBegan()
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
			b.outageEnded()
			// A feed's position means nothing in another incarnation of
			// the stream: check it before the feeds resync.
			b.goBackground(func() {
				b.checkStream(b.bg)
				b.hub.resyncAll()
			})
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			b.log.Warn("nats async error", "subject", subj, "err", err)
			if sub != nil && errors.Is(err, nats.ErrSlowConsumer) {
				b.hub.slowConsumer(sub)
			}
		}),
	}
	nc, err := nats.Connect(cfg.URL, append(opts, cfg.Options...)...)
	if err != nil {
		b.hub.stop()
		return nil, fmt.Errorf("connect to nats %s: %w", RedactURL(cfg.URL), err)
	}
	b.nc = nc
	if b.js, err = jetstream.New(nc); err != nil {
		nc.Close()
		b.hub.stop()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if b.cfg.Replicas <= 0 {
		b.cfg.Replicas = defaultReplicas(nc)
	}
	err = retryUnavailable(ctx, b.log, "open the THREADS stream", func() error {
		var err error
		b.stream, err = ensureStream(ctx, b.js, b.streamConfig(), b.log)
		return err
	})
	if err != nil {
		nc.Close()
		b.hub.stop()
		return nil, err
	}
	b.setEpoch(epochOf(b.stream.CachedInfo()))
	err = retryUnavailable(ctx, b.log, "open the bindings registry", func() error {
		var err error
		b.reg, err = openRegistry(ctx, b, cfg.RegistryTTL, b.cfg.Replicas)
		return err
	})
	if err != nil {
		nc.Close()
		b.hub.stop()
		return nil, err
	}
	if err := b.recent.start(); err != nil {
		nc.Close()
		b.hub.stop()
		return nil, err
	}
	b.goBackground(b.hub.idleLoop)
	return b, nil
}

// OutageBound is how long the connection to NATS may stay down before
// every live feed fails (Listener.Fail with ErrUnavailable, which the
// sidecar turns into close status 1013): clients then resume with since,
// possibly on another sidecar, rather than wait in silence.
const OutageBound = 15 * time.Second

func (b *Bus) outageBegan() {
	b.outageMu.Lock()
	defer b.outageMu.Unlock()
	if b.outage != nil {
		return
	}
	// The feeds fail on a background goroutine, which Close waits for
	// (and which does not start once Close has begun).
	b.outage = time.AfterFunc(OutageBound, func() {
		b.goBackground(func() {
			b.log.Error("nats unreachable, failing every live feed", "for", OutageBound)
			b.hub.failAll(fmt.Errorf("%w: nats unreachable for %v", ErrUnavailable, OutageBound))
		})
	})
}

func (b *Bus) outageEnded() {
	b.outageMu.Lock()
	defer b.outageMu.Unlock()
	if b.outage != nil {
		b.outage.Stop()
		b.outage = nil
	}
}

// unavailable reports whether err says that JetStream could not serve a
// request for now: no reply, or a server error (503: no meta leader or not
// enough servers up; 500: a stream offline).
func unavailable(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 10005: no suitable peers for placement, while servers are down
		// or a cluster forms.
		return apiErr.Code >= 500 || apiErr.ErrorCode == 10005
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// defaultReplicas is 3 when nc's server is one of a cluster of 3 or more
// servers (as far as the server tells its clients), else 1.
func defaultReplicas(nc *nats.Conn) int {
	if nc.ConnectedClusterName() != "" && len(nc.Servers()) >= 3 {
		return 3
	}
	return 1
}

// Retries of Open while JetStream cannot serve it yet (a cluster without a
// meta leader, the node holding a stream down): it waits, as long as ctx
// allows, rather than exit.
const (
	openRetryFirst = 250 * time.Millisecond
	openRetryMax   = 5 * time.Second
)

// retryUnavailable calls fn until it succeeds, fails with an error that
// retrying cannot fix (a conflict, a closed connection), or ctx ends.
func retryUnavailable(ctx context.Context, log *slog.Logger, what string, fn func() error) error {
	delay := openRetryFirst
	for {
		err := fn()
		if err == nil || !unavailable(err) {
			return err
		}
		log.Warn("cannot "+what+" yet, retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, openRetryMax)
	}
}

// Conn is the underlying NATS connection, for subscriptions the caller owns.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// JetStream is the JetStream context of the connection.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Epoch names this incarnation of the THREADS stream. Sequences are only
// comparable between equal epochs.
func (b *Bus) Epoch() string { return *b.epoch.Load() }

func (b *Bus) setEpoch(e string) { b.epoch.Store(&e) }

// Ready reports whether the THREADS stream can be read and written: it
// answers, has a leader, and is the incarnation the feeds follow.
func (b *Bus) Ready(ctx context.Context) error {
	if !b.nc.IsConnected() {
		return fmt.Errorf("not ready: %w", nats.ErrConnectionClosed)
	}
	if err := b.streamErr.Load(); err != nil {
		return fmt.Errorf("not ready: %w", *err)
	}
	info, err := b.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("not ready: stream %s: %w", subjects.Stream, err)
	}
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return fmt.Errorf("not ready: stream %s has no leader", subjects.Stream)
	}
	return nil
}

// streamConfig is THREADS as this sidecar creates it: at start, and again
// when it was deleted.
func (b *Bus) streamConfig() jetstream.StreamConfig {
	return b.cfg.withStoreLimits(StreamConfig(b.cfg.Retention, b.cfg.Replicas))
}

// checkStream reads the stream's info. A stream that was deleted is
// created again (with this sidecar's flags); a stream re-created since the
// last check (another creation time: another epoch, whose sequences start
// again) fails every live feed with ErrStreamChanged, so that clients
// resume and learn that their positions belong to the old epoch.
func (b *Bus) checkStream(ctx context.Context) {
	// The reconnect handler and the idle loop both check: one at a time,
	// or a late answer could set the epoch back.
	b.checkMu.Lock()
	defer b.checkMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, feedIOTimeout)
	defer cancel()
	info, err := b.stream.Info(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		b.log.Warn("stream missing, creating it again", "stream", subjects.Stream)
		var s jetstream.Stream
		if s, err = ensureStream(ctx, b.js, b.streamConfig(), b.log); err == nil {
			info = s.CachedInfo()
		}
	}
	if err != nil {
		err = fmt.Errorf("stream %s: %w", subjects.Stream, err)
		b.streamErr.Store(&err)
		return
	}
	b.streamErr.Store(nil)
	e := epochOf(info)
	newEpoch := e != b.Epoch()
	if newEpoch {
		b.log.Warn("stream re-created: new epoch, failing every live feed", "stream", subjects.Stream, "old_epoch", b.Epoch(), "epoch", e)
		b.setEpoch(e)
		b.hub.failAll(fmt.Errorf("%w: epoch %s", ErrStreamChanged, e))
	}
	b.recent.streamChecked(info.State.FirstSeq, uint64(info.State.NumDeleted), newEpoch)
}

// goBackground runs fn on a goroutine that Close waits for, unless Close
// has begun.
func (b *Bus) goBackground(fn func()) bool {
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.bgDone {
		return false
	}
	b.bgWG.Go(fn)
	return true
}

func (b *Bus) stopBackground() {
	b.bgMu.Lock()
	b.bgDone = true
	b.bgMu.Unlock()
	b.bgCancel()
	b.scan.stop()
	b.bgWG.Wait()
}

// Close drains the NATS connection, which flushes pending publishes and
// ends every subscription, then stops the dispatchers. It is idempotent.
func (b *Bus) Close(ctx context.Context) error {
	b.stopOnce.Do(func() {
		b.outageEnded()
		b.stopBackground()
		b.reg.close()
		if err := b.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			b.nc.Close()
		}
		select {
		case <-b.closed:
		case <-ctx.Done():
			b.nc.Close()
			<-b.closed
			b.stopErr = fmt.Errorf("drain nats: %w", ctx.Err())
		}
		b.hub.stop()
	})
	return b.stopErr
}
