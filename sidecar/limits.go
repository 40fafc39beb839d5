package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/metrics"
)

// Defaults of Limits. They leave the legacy frontend (a few frames a
// second, a few thread switches a minute, frames up to 8 KiB) far from
// every limit; see README "Limits".
const (
	DefaultFrameRate           = 20        // frames per second
	DefaultFrameBurst          = 30        // frames at once
	DefaultByteRate            = 256 << 10 // bytes per second
	DefaultBindRate            = 1         // binds per second
	DefaultBindBurst           = 10        // binds at once
	DefaultNewThreadsPerMinute = 20        // threads not bound lately
	DefaultRateLimitTolerance  = 30        // refusals before 1008
	DefaultLogRate             = 10        // client-caused log lines per second, sidecar-wide
	byteBurstSeconds           = 4         // the byte burst is this many seconds' worth
	recentThreads              = 4         // threads a connection may return to freely
	closingReadPause           = 10 * time.Millisecond
	refusalForgiveness         = rate.Limit(1) // refusals forgiven per second
)

// Limits are what one connection may do, each refused beyond its limit
// with an error frame "rate_limited" (the frame is not published, the bind
// not made), and the connection closed with status 1008 "rate limit" once
// it keeps going. The zero value of each field means its default; a
// negative value turns that limit off.
type Limits struct {
	// FrameRate is how many frames a connection may send per second,
	// sustained, and FrameBurst how many at once. Pings count. By default,
	// 20/s and 30.
	FrameRate  float64
	FrameBurst int
	// ByteRate is how many bytes of frames a connection may send per
	// second; it may send 4 seconds' worth, or one largest frame, at once.
	// It bounds how fast one connection fills the store. By default,
	// 256 KiB/s.
	ByteRate int
	// BindRate is how many binds and switches a client may cause per
	// second, and BindBurst how many at once. The bind a URL asks for and
	// binds from the backend are not counted. By default, 1/s and 10.
	BindRate  float64
	BindBurst int
	// NewThreadsPerMinute is how many threads a connection may bind per
	// minute that are none of the last 4 it was bound to: each new thread
	// id a client names becomes a stream subject kept for the retention.
	// By default, 20.
	NewThreadsPerMinute int
	// RateLimitTolerance is how many refusals a connection may collect
	// before it is closed with 1008 "rate limit"; one is forgiven per
	// second. By default, 30.
	RateLimitTolerance int
	// PingInterval is how often the sidecar pings each connection, and
	// PongTimeout how long it waits for the pong before closing the
	// connection, whose binding then goes: a peer gone without a close is
	// noticed within their sum. By default, 25s and 15s; a negative
	// PingInterval turns pings off.
	PingInterval time.Duration
	PongTimeout  time.Duration
	// LogRate bounds, sidecar-wide, the log lines per second that clients
	// can cause (rate-limit warnings, failed publishes, binds at info);
	// beyond it binds are logged at debug and warnings are counted in
	// threadbus_log_lines_suppressed_total. By default, 10/s.
	LogRate float64
}

func (l Limits) withDefaults() Limits {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.FrameRate, DefaultFrameRate)
	defInt(&l.FrameBurst, DefaultFrameBurst)
	defInt(&l.ByteRate, DefaultByteRate)
	def(&l.BindRate, DefaultBindRate)
	defInt(&l.BindBurst, DefaultBindBurst)
	defInt(&l.NewThreadsPerMinute, DefaultNewThreadsPerMinute)
	defInt(&l.RateLimitTolerance, DefaultRateLimitTolerance)
	def(&l.LogRate, DefaultLogRate)
	if l.PingInterval == 0 {
		l.PingInterval = DefaultPingInterval
	}
	if l.PongTimeout <= 0 {
		l.PongTimeout = DefaultPongTimeout
	}
	return l
}

// limiter returns a limiter of r per second and burst, or one that allows
// everything when r is negative (off).
func limiter(r float64, burst int) *rate.Limiter {
	if r < 0 || burst < 0 {
		return rate.NewLimiter(rate.Inf, 0)
	}
	return rate.NewLimiter(rate.Limit(r), max(burst, 1))
}

// ErrRateLimited is a client's frame or bind refused by a per-connection
// limit; clients see the code "rate_limited".
var ErrRateLimited = errors.New("rate limited")

// Close reasons of the limits.
const (
	reasonRateLimit   = "rate limit"
	reasonInvalidUTF8 = "invalid UTF-8"
)

// closeGrace is how long a close for a broken limit waits for the client's
// close frame before the connection is cut: coder/websocket waits 5 s,
// reading and discarding whatever a flooding client keeps sending.
var closeGrace = map[string]time.Duration{reasonRateLimit: time.Second, reasonInvalidUTF8: time.Second}

// connLimits are one connection's limiters, made at its first frame or
// bind so that an idle connection does not pay for them. The reader and
// binds use them at the same time (a backend bind runs on a goroutine of
// its own): the limiters are safe for concurrent use, c.lim is set under
// c.mu, and recent and next are used by binds only, under bindMu.
type connLimits struct {
	frames, bytes, binds, threads, patience *rate.Limiter
	recent                                  [recentThreads]string // threads bound lately
	next                                    int
}

func (c *conn) limits() *connLimits {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lim != nil {
		return c.lim
	}
	l := c.s.cfg.Limits
	byteBurst := max(l.ByteRate*byteBurstSeconds, int(c.s.cfg.MaxFrameBytes))
	perMinute := float64(l.NewThreadsPerMinute) / 60
	c.lim = &connLimits{
		frames:   limiter(l.FrameRate, l.FrameBurst),
		bytes:    limiter(float64(l.ByteRate), byteBurst),
		binds:    limiter(l.BindRate, l.BindBurst),
		threads:  limiter(perMinute, l.NewThreadsPerMinute),
		patience: limiter(float64(refusalForgiveness), l.RateLimitTolerance),
	}
	return c.lim
}

// admitFrame takes a frame of n bytes from the connection's rates. A frame
// over them is answered with rate_limited (or the connection closed) and
// must be dropped. It runs on the reader.
func (c *conn) admitFrame(n int) bool {
	if c.closing() {
		// What arrives until the close completes is dropped, read slowly:
		// a flooder's frames back up in its own socket, not in our CPU.
		time.Sleep(closingReadPause)
		return false
	}
	l := c.limits()
	now := time.Now()
	reason, what := "", ""
	switch {
	case !l.frames.AllowN(now, 1):
		reason, what = metrics.RefusedFrameRate, fmt.Sprintf("more than %g frames per second", l.frames.Limit())
	case !l.bytes.AllowN(now, n):
		reason, what = metrics.RefusedByteRate, fmt.Sprintf("more than %g bytes per second", l.bytes.Limit())
	default:
		return true
	}
	onFreshStack(func() {
		if c.rateLimited(reason) {
			c.sendError(frame.CodeRateLimited, "frame not published: "+what+"; slow down and send it again")
		}
	})
	// Read the next frame no sooner than the rate allows one: a client over
	// its limit is slowed by TCP instead of spinning this reader, whose
	// CPU the embedded NATS server and other connections need.
	if d := time.Duration(float64(time.Second) / float64(l.frames.Limit())); d > 0 {
		time.Sleep(min(d, 100*time.Millisecond))
	}
	return false
}

// admitBind counts a bind to tid that via asked for. Binds the URL or the
// backend asks for are not limited but are remembered as recent threads.
// Called with bindMu held.
func (c *conn) admitBind(tid, via string) error {
	l := c.limits()
	recent := false
	for _, t := range l.recent {
		recent = recent || t == tid
	}
	if via != viaConnect && via != viaBackend {
		now := time.Now()
		if !l.binds.AllowN(now, 1) {
			c.rateLimited(metrics.RefusedBindRate)
			return fmt.Errorf("%w: more than %g binds per second, thread %s not bound", ErrRateLimited, l.binds.Limit(), tid)
		}
		if !recent && !l.threads.AllowN(now, 1) {
			c.rateLimited(metrics.RefusedNewThreads)
			return fmt.Errorf("%w: more than %d new threads per minute, thread %s not bound", ErrRateLimited, l.threads.Burst(), tid)
		}
	}
	if !recent {
		l.recent[l.next] = tid
		l.next = (l.next + 1) % recentThreads
	}
	return nil
}

// rateLimited counts a refusal and closes the connection with 1008 when it
// has used up its tolerance. It reports whether the connection stays open.
func (c *conn) rateLimited(reason string) bool {
	if c.closing() {
		return false // refused already; what the client sends until the close is dropped
	}
	c.s.metrics.Refused.WithLabelValues(reason).Inc()
	if c.limits().patience.Allow() {
		c.warnSampled("rate limited", "limit", reason)
		return true
	}
	c.s.metrics.Refused.WithLabelValues(metrics.RefusedRateClose).Inc()
	c.warnSampled("rate limit exceeded, closing", "limit", reason)
	c.closeWith(websocket.StatusPolicyViolation, reasonRateLimit)
	return false
}

// warnSampled logs a warning a client can cause, within the sidecar-wide
// budget for such lines.
func (c *conn) warnSampled(msg string, args ...any) {
	if c.s.clientLogs.Allow() {
		c.log.Warn(msg, args...)
		return
	}
	c.s.metrics.LogsSuppressed.Inc()
}

// bindLogLevel is the level of a "thread bound" line: info within the
// sidecar-wide budget of client-caused lines, debug beyond it, so a client
// switching threads in a loop cannot flood the log.
func (c *conn) bindLogLevel() slog.Level {
	if c.s.clientLogs.Allow() {
		return slog.LevelInfo
	}
	c.s.metrics.LogsSuppressed.Inc()
	return slog.LevelDebug
}

// newClientLogLimiter is the sidecar-wide budget of log lines clients can
// cause.
func newClientLogLimiter(l Limits) *rate.Limiter {
	return limiter(l.LogRate, int(max(l.LogRate*10, 1)))
}
