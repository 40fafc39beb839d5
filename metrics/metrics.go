// Package metrics defines threadbus's Prometheus metrics. A Metrics is
// created once per process, registered on a registry, and handed to the
// sidecar; every field is safe for concurrent use and cheap (atomic) to
// update, so it may sit on the delivery path.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "threadbus"

// Label values.
const (
	PathLive   = "live"
	PathReplay = "replay"

	ReasonSlowConsumer = "slow_consumer"

	// Reasons a client's frame, bind or connection was refused.
	RefusedFrameRate   = "frame_rate"   // frames per second
	RefusedByteRate    = "byte_rate"    // inbound bytes per second
	RefusedBindRate    = "bind_rate"    // binds and switches per second
	RefusedNewThreads  = "new_threads"  // new threads per minute
	RefusedRateClose   = "rate_close"   // closed with 1008 after sustained refusals
	RefusedInvalidUTF8 = "invalid_utf8" // closed with 1007
	RefusedMaxConns    = "max_conns"    // HTTP 503: --max-connections
	RefusedMaxConnsIP  = "max_conns_ip" // HTTP 503: --max-conns-per-ip
	RefusedConnRateIP  = "conn_rate_ip" // HTTP 503: --conn-rate-per-ip
	RefusedHost        = "host"         // HTTP 403: Host not in --allowed-host
	RefusedSockets     = "sockets"      // socket closed at accept: over --max-connections plus headroom
	RefusedPongTimeout = "pong_timeout" // closed: no pong within the deadline

	FrameThread  = "thread"  // published to thread.<tid>.in
	FrameConn    = "conn"    // published to conn.<cid>.in
	FramePing    = "ping"    // answered locally
	FrameSwitch  = "switch"  // switch_thread
	FrameInvalid = "invalid" // answered with an error frame

	AuthzAllow       = "allow"       // the hook (or the cache) allowed the bind
	AuthzDeny        = "deny"        // the hook denied it
	AuthzUnavailable = "unavailable" // no usable answer: denied (fail closed)
	AuthzRevoked     = "revoked"     // a binding ended by threadbus.authz.revoke
)

// Codes of AuthRefused: the contract's close-code words.
const (
	RefusedUnauthorized    = "unauthorized"
	RefusedTokenExpired    = "token_expired"
	RefusedConnectionLimit = "connection_limit"
)

// Metrics are the sidecar's metrics.
type Metrics struct {
	ConnectionsOpen prometheus.Gauge
	Binds           prometheus.Counter
	Switches        prometheus.Counter
	BindErrors      prometheus.Counter
	FramesIn        *prometheus.CounterVec // by kind
	EventsDelivered *prometheus.CounterVec // by path
	EventsDropped   *prometheus.CounterVec // by reason
	PublishErrors   prometheus.Counter
	AuthRefused     *prometheus.CounterVec // connections refused or closed by auth, by code
	AuthzDecisions  *prometheus.CounterVec // authorization of client binds, by result
	Refused         *prometheus.CounterVec // by reason
	LogsSuppressed  prometheus.Counter
	BindDuration    prometheus.Histogram
	DeliveryLatency prometheus.Histogram
}

// BusStats are the bus's own counters, read when the metrics are scraped.
type BusStats interface {
	// GapsRepaired counts live gaps filled from the stream.
	GapsRepaired() uint64
	// ScanPasses counts the passes of shared replay scans, and
	// ScannedMessages the stream messages they read.
	ScanPasses() uint64
	ScannedMessages() uint64
	// RecentHits counts replays answered from the recent window in
	// memory, RecentMisses those that read the stream instead.
	RecentHits() uint64
	RecentMisses() uint64
}

// New creates the metrics and registers them, with the Go runtime and
// process collectors and the bus's counters, on reg.
func New(reg prometheus.Registerer, bus BusStats) *Metrics {
	m := &Metrics{
		ConnectionsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_open",
			Help: "WebSocket connections open now.",
		}),
		Binds: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "binds_total",
			Help: "Bindings of a connection to a thread, first bindings and switches alike.",
		}),
		Switches: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "switches_total",
			Help: "Bindings that moved a bound connection to another thread.",
		}),
		BindErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "bind_errors_total",
			Help: "Bindings that failed on NATS (not counting invalid thread ids).",
		}),
		FramesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "frames_in_total",
			Help: "Client frames received, by what became of them: thread, conn, ping, switch, invalid.",
		}, []string{"kind"}),
		EventsDelivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "events_delivered_total",
			Help: "Thread events written to WebSocket clients, by path: replay or live.",
		}, []string{"path"}),
		EventsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "events_dropped_total",
			Help: "Queued frames dropped because their connection was closed, by reason.",
		}, []string{"reason"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "refused_total",
			Help: "Client frames, binds and connections refused by a limit, by reason.",
		}, []string{"reason"}),
		LogsSuppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "log_lines_suppressed_total",
			Help: "Warnings not logged, or binds logged at debug, because clients caused too many.",
		}),
		PublishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "jetstream_publish_errors_total",
			Help: "Client frames JetStream did not acknowledge (reported to the client).",
		}),
		AuthRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "auth_refused_total",
			Help: "Connections refused at the handshake or closed later by authentication, by code: unauthorized, token_expired, connection_limit.",
		}, []string{"code"}),
		AuthzDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "authz_decisions_total",
			Help: "Authorization of binds a client caused, by result: allow, deny, unavailable; revoked counts bindings ended by revocation.",
		}, []string{"result"}),
		BindDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "bind_duration_seconds",
			Help:    "Time from a bind request to the end of its replay.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100µs .. 3.3s
		}),
		DeliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "delivery_latency_seconds",
			Help:    "Time from the stream's timestamp of a live event to its WebSocket write.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18), // 50µs .. 6.5s
		}),
	}
	reg.MustRegister(
		m.ConnectionsOpen, m.Binds, m.Switches, m.BindErrors, m.FramesIn,
		m.EventsDelivered, m.EventsDropped, m.PublishErrors, m.AuthRefused, m.AuthzDecisions,
		m.BindDuration, m.DeliveryLatency,
		m.Refused, m.LogsSuppressed,
		busCounter("live_gaps_repaired_total", "Gaps on the live path (lost republished events) filled from the stream.", bus.GapsRepaired),
		busCounter("replay_scan_passes_total", "Passes of shared stream scans that served replays while many binds ran at once.", bus.ScanPasses),
		busCounter("replay_scan_messages_total", "Stream messages read by shared replay scans.", bus.ScannedMessages),
		busCounter("replay_cache_hits_total", "Replays answered from the recent events held in memory.", bus.RecentHits),
		busCounter("replay_cache_misses_total", "Replays the recent events in memory could not answer completely, read from the stream instead.", bus.RecentMisses),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Make every labelled series visible from the start.
	for _, k := range []string{FrameThread, FrameConn, FramePing, FrameSwitch, FrameInvalid} {
		m.FramesIn.WithLabelValues(k)
	}
	m.EventsDelivered.WithLabelValues(PathLive)
	m.EventsDelivered.WithLabelValues(PathReplay)
	m.EventsDropped.WithLabelValues(ReasonSlowConsumer)
	for _, c := range []string{RefusedUnauthorized, RefusedTokenExpired, RefusedConnectionLimit} {
		m.AuthRefused.WithLabelValues(c)
	}
	for _, r := range []string{AuthzAllow, AuthzDeny, AuthzUnavailable, AuthzRevoked} {
		m.AuthzDecisions.WithLabelValues(r)
	}
	for _, r := range []string{RefusedFrameRate, RefusedByteRate, RefusedBindRate, RefusedNewThreads, RefusedRateClose,
		RefusedInvalidUTF8, RefusedMaxConns, RefusedMaxConnsIP, RefusedConnRateIP, RefusedHost, RefusedSockets, RefusedPongTimeout} {
		m.Refused.WithLabelValues(r)
	}
	return m
}

// AuthzCacheStats are the authorization cache's counters.
type AuthzCacheStats interface {
	CacheCounts() (hits, misses, hookCalls uint64)
}

// RegisterAuthzCache registers the authorization cache's counters on reg.
func RegisterAuthzCache(reg prometheus.Registerer, c AuthzCacheStats) {
	read := func(i int) func() uint64 {
		return func() uint64 {
			h, m, n := c.CacheCounts()
			return [3]uint64{h, m, n}[i]
		}
	}
	reg.MustRegister(
		busCounter("authz_cache_hits_total", "Client binds authorized from the cache of allowed (user, thread) pairs.", read(0)),
		busCounter("authz_cache_misses_total", "Client binds the cache could not answer: they made or joined a hook call.", read(1)),
		busCounter("authz_hook_calls_total", "Calls of the authorization hook.", read(2)),
	)
}

func busCounter(name, help string, read func() uint64) prometheus.CounterFunc {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help},
		func() float64 { return float64(read()) })
}
