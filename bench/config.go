package bench

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// Scenario names one measurement.
type Scenario string

// The scenarios, in the order Run runs them by default.
const (
	Latency Scenario = "latency"
	FanOut  Scenario = "fanout"
	Storm   Scenario = "storm"
	Inbound Scenario = "inbound"
)

// Scenarios are every scenario, in their default order.
var Scenarios = []Scenario{Latency, FanOut, Storm, Inbound}

// Defaults of Config.
const (
	DefaultPayloadBytes = 256
	DefaultWaitTimeout  = 60 * time.Second
	DefaultDialWorkers  = 64

	DefaultLatencyRate     = 1000
	DefaultLatencyDuration = 10 * time.Second
	DefaultLatencyWarmup   = time.Second

	DefaultFanOutConns  = 1000
	DefaultFanOutEvents = 2000
	DefaultFanOutWindow = 256

	DefaultStormConns  = 10000
	DefaultStormEvents = 10

	DefaultInboundConns  = 100
	DefaultInboundFrames = 500
)

// Config configures Run. The zero value of each field means its documented
// default.
type Config struct {
	// Scenarios to run, in this order. By default, all of Scenarios.
	Scenarios []Scenario

	// HTTPAddr (host:port) and NATSURL name a running sidecar and the NATS
	// server it uses. Both or neither must be set. By default, Run starts a
	// sidecar per scenario.
	HTTPAddr string
	NATSURL  string
	// NATSWebSocketURL is a nats-server WebSocket listener (ws://host:port)
	// for the fan-out baseline when HTTPAddr is set; without it that baseline
	// is skipped. A sidecar started by Run has one of its own.
	NATSWebSocketURL string
	// PID is the process id of the sidecar at HTTPAddr, whose RSS and CPU
	// time are then read from /proc. By default, they are read from its
	// /metrics (process_resident_memory_bytes, process_cpu_seconds_total).
	PID int

	// Binary is the threadbus executable to start. By default, the running
	// executable (os.Executable).
	Binary string
	// SidecarArgs are extra `threadbus serve` arguments for a started sidecar.
	SidecarArgs []string
	// KeepSidecarLog copies a started sidecar's log to this writer. By
	// default the log is kept in memory and its tail shown on failure.
	KeepSidecarLog io.Writer

	// PayloadBytes is the size of each published event and client frame
	// body. By default, 256.
	PayloadBytes int
	// WaitTimeout bounds each wait for a phase to complete (every event
	// received, every connection bound). By default, 60s.
	WaitTimeout time.Duration
	// DialWorkers is how many connections are opened at a time. By default, 64.
	DialWorkers int

	// Progress receives a progress line while a long phase runs. By
	// default, nothing is printed.
	Progress io.Writer
	// Logger receives what Run does, at debug and info. By default, nothing
	// is logged.
	Logger *slog.Logger

	Latency LatencyConfig
	FanOut  FanOutConfig
	Storm   StormConfig
	Inbound InboundConfig
}

// LatencyConfig configures the latency scenario.
type LatencyConfig struct {
	// Rate is how many events per second are published. By default, 1000.
	Rate int
	// Duration is how long the measured part publishes. By default, 10s.
	Duration time.Duration
	// Warmup is how long events are published before measuring. By
	// default, 1s; negative means none.
	Warmup time.Duration
	// Conns is how many WebSocket connections receive the thread's events.
	// By default, 1.
	Conns int
	// Flood is how many other connections flood the sidecar with client
	// frames while it is measured, reconnecting when closed. By default,
	// none. Started sidecars turn the frame rate limits off for the
	// inbound scenario: pass --sidecar-arg=--frame-rate=20 (and
	// --inbound-bytes-rate) to measure under the defaults.
	Flood int
}

// FanOutConfig configures the fan-out scenario.
type FanOutConfig struct {
	// Conns is how many connections receive the one thread. By default, 1000.
	Conns int
	// Events is how many events are published. By default, 2000.
	Events int
	// Window is how many events the publisher may be ahead of the average
	// receiver, so that no send queue overflows. By default, 256.
	Window int
}

// StormConfig configures the bind storm.
type StormConfig struct {
	// Conns are the storm sizes, run one after another. By default, 10000.
	Conns []int
	// Events is how many events each thread holds for its replay. By
	// default, 10.
	Events int
	// Grouped stores each thread's events one after another, as one agent
	// run's burst would be. By default they are interleaved with every other
	// thread's (event j of every thread, then event j+1), as events of
	// threads active at the same time are: a reconnect storm after a
	// restart replays exactly that.
	Grouped bool
	// Connect has each connection bind as it connects
	// (/ws?thread_id=T&since=0), as clients reconnecting do, and measures
	// one connection from its dial to its last replayed event. By default
	// the connections are opened unbound first and then all bind at once
	// (switch_thread), which measures a bind from its request.
	Connect bool
	// Restart stops the sidecar after the events are stored and starts a
	// new process on the same data directory before the storm: the new
	// sidecar has served nothing (a restart, the common cause of a storm).
	// Only for a sidecar the bench starts. By default, the sidecar that
	// saw the events being stored serves the storm.
	Restart bool
	// NoBaseline skips the nats.go baseline. By default it runs.
	NoBaseline bool
	// Idle is how long the connections stay bound and idle before the
	// sidecar's memory is read. Go shrinks goroutine stacks and returns
	// freed memory to the OS only after a GC, which an idle process runs
	// every 2 minutes: 130s measures the steady state. By default, 0: the
	// memory is read as soon as it stops moving.
	Idle time.Duration
	// Auth also runs each storm against a sidecar started with `--auth jwt
	// --jwt-secret-file <a fresh random secret> --authz nats`, right after
	// the storm without auth, and reports it as a result of its own whose
	// baseline is that storm. Each connection presents its own user's HS256
	// token in an Authorization header (minted before the phase), so that
	// every bind is a cache miss; the bench process answers
	// threadbus.authz.bind, allowing every request, and counts the calls.
	// It needs a sidecar started by Run. By default, off.
	Auth bool
}

// InboundConfig configures the inbound scenario.
type InboundConfig struct {
	// Conns is how many connections send frames, each bound to its own
	// thread. By default, 100.
	Conns int
	// Frames is how many frames each connection sends. By default, 500.
	Frames int
}

func (c Config) withDefaults() (Config, error) {
	if len(c.Scenarios) == 0 {
		c.Scenarios = Scenarios
	}
	for _, s := range c.Scenarios {
		if !knownScenario(s) {
			return c, fmt.Errorf("%w: %q (want one of %v)", ErrUnknownScenario, s, Scenarios)
		}
	}
	if (c.HTTPAddr == "") != (c.NATSURL == "") {
		return c, fmt.Errorf("%w: a running sidecar needs both its HTTP address and its NATS URL", ErrConfig)
	}
	if c.Storm.Auth && c.HTTPAddr != "" {
		return c, fmt.Errorf("%w: the authorized storm starts its own sidecar with --auth jwt: it cannot use a running one", ErrConfig)
	}
	if c.HTTPAddr == "" && c.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("%w: no threadbus binary to start: %v", ErrConfig, err)
		}
		c.Binary = exe
	}
	if c.PayloadBytes <= 0 {
		c.PayloadBytes = DefaultPayloadBytes
	}
	if c.PayloadBytes < minPayloadBytes {
		c.PayloadBytes = minPayloadBytes
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	if c.DialWorkers <= 0 {
		c.DialWorkers = DefaultDialWorkers
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.SidecarArgs = append([]string(nil), c.SidecarArgs...)
	c.Latency = c.Latency.withDefaults()
	c.FanOut = c.FanOut.withDefaults()
	c.Storm = c.Storm.withDefaults()
	c.Inbound = c.Inbound.withDefaults()
	return c, nil
}

func knownScenario(s Scenario) bool {
	for _, k := range Scenarios {
		if s == k {
			return true
		}
	}
	return false
}

func (c LatencyConfig) withDefaults() LatencyConfig {
	if c.Rate <= 0 {
		c.Rate = DefaultLatencyRate
	}
	if c.Duration <= 0 {
		c.Duration = DefaultLatencyDuration
	}
	if c.Warmup == 0 {
		c.Warmup = DefaultLatencyWarmup
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.Conns <= 0 {
		c.Conns = 1
	}
	return c
}

func (c FanOutConfig) withDefaults() FanOutConfig {
	if c.Conns <= 0 {
		c.Conns = DefaultFanOutConns
	}
	if c.Events <= 0 {
		c.Events = DefaultFanOutEvents
	}
	if c.Window <= 0 {
		c.Window = DefaultFanOutWindow
	}
	return c
}

func (c StormConfig) withDefaults() StormConfig {
	var sizes []int
	for _, n := range c.Conns {
		if n > 0 {
			sizes = append(sizes, n)
		}
	}
	if len(sizes) == 0 {
		sizes = []int{DefaultStormConns}
	}
	c.Conns = sizes
	if c.Events <= 0 {
		c.Events = DefaultStormEvents
	}
	return c
}

func (c InboundConfig) withDefaults() InboundConfig {
	if c.Conns <= 0 {
		c.Conns = DefaultInboundConns
	}
	if c.Frames <= 0 {
		c.Frames = DefaultInboundFrames
	}
	return c
}
