package sidecar

import (
	"context"
	"errors"
	"time"

	"github.com/threadbus/threadbus/metrics"
)

// Defaults of the liveness check (Limits.PingInterval, Limits.PongTimeout).
const (
	DefaultPingInterval = 25 * time.Second // the legacy heartbeat's
	DefaultPongTimeout  = 15 * time.Second
	// pingTick is how often the sweeper pings a shard of the connections:
	// each connection is pinged once per interval, spread over it.
	pingTick = time.Second
)

// pingLoop pings every connection once per PingInterval and closes those
// whose pong does not come within PongTimeout, so that a peer that went
// away without a close (a laptop lid, a dropped network) loses its binding
// within interval + timeout. One goroutine walks the connections a shard
// per tick: an idle connection costs no timer or goroutine of its own, and
// a ping costs a goroutine only until its pong (see conn.ping). It runs
// under s.dispatch and ends when Close closes s.stopped.
func (s *Server) pingLoop() {
	interval := s.cfg.Limits.PingInterval
	if interval < 0 {
		interval = pingTick // no pings, but the tick still sweeps admission's rates
	}
	shards := max(1, int(interval/pingTick))
	t := time.NewTicker(interval / time.Duration(shards))
	defer t.Stop()
	for k := 0; ; k = (k + 1) % shards {
		select {
		case <-s.stopped:
			return
		case now := <-t.C:
			s.admission.sweep(now)
		}
		if s.cfg.Limits.PingInterval < 0 {
			continue
		}
		for _, c := range s.shard(k, shards) {
			c.ping(interval)
		}
	}
}

// shard returns the connections of shard k of n, by the last byte of their
// id (nuids end in a sequence: consecutive connections spread).
func (s *Server) shard(k, n int) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*conn
	for id, c := range s.conns {
		if int(id[len(id)-1])%n == k {
			out = append(out, c)
		}
	}
	return out
}

// ping sends a WebSocket ping on a goroutine that waits for its pong (the
// reader receives it) and closes the connection without one. It skips a
// connection whose reader has not started (its pong would go unread: a
// replay asked for at connect runs first, however long it takes), one
// younger than interval (its first ping comes a full interval after it
// opened), closing, already pinged, or whose writer is busy: a write
// blocked on the client is bounded by WriteTimeout, and a ping would wait
// behind it.
func (c *conn) ping(interval time.Duration) {
	c.mu.Lock()
	skip := !c.reading || c.dead || c.sendQueue.closeCode != 0 || c.sendQueue.writing || c.pinging ||
		time.Since(c.openedAt) < interval
	if !skip {
		c.pinging = true
		c.wg.Add(1)
	}
	c.mu.Unlock()
	if skip {
		return
	}
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.Limits.PongTimeout)
		err := c.ws.Ping(ctx)
		cancel()
		c.mu.Lock()
		c.pinging = false
		c.mu.Unlock()
		if errors.Is(err, context.DeadlineExceeded) && !c.closing() {
			c.s.metrics.Refused.WithLabelValues(metrics.RefusedPongTimeout).Inc()
			c.warnSampled("no pong, closing", "timeout", c.s.cfg.Limits.PongTimeout)
			c.ws.CloseNow() // the reader ends, and end() removes the binding
		}
	}()
}
