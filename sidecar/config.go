package sidecar

import (
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/threadbus/threadbus/auth"
	"github.com/threadbus/threadbus/bus"
)

// Defaults of Config.
const (
	DefaultReplayGrace    = 30 * time.Second
	DefaultMaxFrameBytes  = 64 << 10
	DefaultSendQueueBytes = 1 << 20
	DefaultWriteTimeout   = 30 * time.Second
	DefaultBindTimeout    = 10 * time.Second
)

// Config configures a Server. The zero value of each field means its
// documented default, except Bus, which is required.
type Config struct {
	Bus *bus.Bus
	// SidecarID names this sidecar in the Threadbus-Sidecar header and in
	// logs. By default, a random id.
	SidecarID string
	// ReplayGrace is how far back a binding without since replays: from the
	// connection's open time for its first binding, from the bind time for
	// later ones. By default, DefaultReplayGrace (30s).
	ReplayGrace time.Duration
	// MaxFrameBytes is the largest client frame accepted; a larger one closes
	// the connection with status 1009. By default, 64 KiB.
	MaxFrameBytes int64
	// SendQueueBytes bounds the frames queued for one connection; overflowing
	// it closes the connection with status 1008. By default, 1 MiB.
	SendQueueBytes int
	// WriteTimeout bounds one write to a client (a batch of queued frames); a client that
	// accepts nothing for that long is disconnected. By default, 30s.
	WriteTimeout time.Duration
	// BindTimeout bounds the NATS calls of one binding. By default, 10s.
	BindTimeout time.Duration
	// OriginPatterns are the browser origins allowed besides the sidecar's
	// own host (see websocket.AcceptOptions). By default, none.
	OriginPatterns []string
	// Verifier authenticates every WebSocket handshake; a connection whose
	// token it refuses gets an error frame and close 4401 (4001 when
	// expired). By default (nil), connections are anonymous.
	Verifier auth.Verifier
	// TokenQueryParam is the name of a query parameter that may carry the
	// token when no header does. By default (""), tokens in URLs are
	// ignored: query strings end up in access logs.
	TokenQueryParam string
	// TokenLeeway is added to a token's expiry before its connection is
	// closed with 4001; it should be the Verifier's leeway. By default, 0.
	TokenLeeway time.Duration
	// MaxConnsPerUser caps the connections one user has open on this
	// sidecar; the next is closed with 4429. By default (0), no cap.
	MaxConnsPerUser int
	// Authorizer is asked before every bind a client causes (?thread_id,
	// switch_thread, a frame naming another thread); binds the backend
	// requests on conn.<cid>.bind are trusted. With an Authorizer the
	// sidecar also obeys threadbus.authz.revoke. By default (nil), every
	// bind is allowed.
	Authorizer auth.Authorizer
	// Limits bound what one connection may do; see Limits.
	Limits Limits
	// Admission decides which handshakes are accepted; see Admission.
	Admission Admission
	// Logger receives the sidecar's logs. By default, slog.Default().
	Logger *slog.Logger
	// Registry receives the sidecar's metrics and is served on /metrics.
	// By default, a new registry of the Server's own.
	Registry *prometheus.Registry
}

func (c Config) withDefaults() (Config, error) {
	if c.Bus == nil {
		return c, errors.New("sidecar: Config.Bus is required")
	}
	if c.SidecarID == "" {
		c.SidecarID = nuid.Next()
	}
	if c.ReplayGrace < 0 {
		return c, errors.New("sidecar: negative replay grace")
	}
	if c.ReplayGrace == 0 {
		c.ReplayGrace = DefaultReplayGrace
	}
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.SendQueueBytes <= 0 {
		c.SendQueueBytes = DefaultSendQueueBytes
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.BindTimeout <= 0 {
		c.BindTimeout = DefaultBindTimeout
	}
	if c.MaxConnsPerUser < 0 || c.TokenLeeway < 0 {
		return c, errors.New("sidecar: negative MaxConnsPerUser or TokenLeeway")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	c.Limits = c.Limits.withDefaults()
	c.Admission = c.Admission.withDefaults()
	c.OriginPatterns = append([]string(nil), c.OriginPatterns...)
	return c, nil
}
