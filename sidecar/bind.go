package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/metrics"
	"github.com/threadbus/threadbus/subjects"
)

// binding is one binding of a connection to a thread. It is the connection's
// bus.Listener for that thread: while the binding replays history, live
// events wait in pending; afterwards they are queued directly.
type binding struct {
	c   *conn
	tid string

	// Guarded by c.mu.
	replaying    bool
	pending      []bus.Event
	pendingBytes int
	last         uint64 // sequence of the last event queued for the client
}

var _ bus.Listener = (*binding)(nil)

// Deliver implements bus.Listener.
func (b *binding) Deliver(ev bus.Event) {
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.binding != b {
		return // switched away: nothing of this thread after thread_bound
	}
	if b.replaying {
		// Live events waiting for the replay count with the queue against
		// the connection's budget.
		held := b.pendingBytes + c.sendQueue.bytes + c.sendQueue.inflight
		if held+len(ev.Frame) > c.s.cfg.SendQueueBytes && len(b.pending) > 0 {
			c.log.Warn("live events outran the replay, closing", "thread", b.tid, "pending", len(b.pending))
			c.s.metrics.EventsDropped.WithLabelValues(metrics.ReasonSlowConsumer).Add(float64(len(b.pending) + 1))
			b.pending, b.pendingBytes = nil, 0
			c.closeWithLocked(websocket.StatusPolicyViolation, reasonSlowConsumer)
			return
		}
		b.pending = append(b.pending, ev)
		b.pendingBytes += len(ev.Frame)
		return
	}
	b.queueLocked(ev, liveEvent)
}

// Fail implements bus.Listener.
func (b *binding) Fail(err error) {
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.binding != b {
		return
	}
	c.log.Error("live feed failed, closing", "thread", b.tid, "last_seq", b.last, "err", err)
	c.closeWithLocked(websocket.StatusTryAgainLater, reasonFeedFailed)
}

func (b *binding) queueLocked(ev bus.Event, path eventPath) {
	if ev.Seq <= b.last {
		return // replayed already
	}
	b.last = ev.Seq
	b.c.enqueueLocked(outFrame{data: ev.Frame, path: path, at: ev.Time})
}

// bind binds the connection to tid, replays what the binding's start rule
// selects, and switches the binding to live delivery. via says what asked
// for it, for the log. Called with bindMu held.
func (c *conn) bind(tid string, since *uint64, epoch, via string) (frame.Bound, error) {
	if err := subjects.ValidateThreadID(tid); err != nil {
		return frame.Bound{}, err
	}
	c.mu.Lock()
	c.bindingTo = tid
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.bindingTo = ""
		c.mu.Unlock()
	}()
	if err := c.admitBind(tid, via); err != nil {
		return frame.Bound{}, err
	}
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.BindTimeout)
	defer cancel()
	if err := c.authorize(ctx, tid, via); err != nil {
		return frame.Bound{}, fmt.Errorf("bind conn %s to thread %s: %w", c.id, tid, err)
	}
	start, recovered, err := c.replayStart(ctx, tid, since, epoch)
	if err != nil {
		c.s.metrics.BindErrors.Inc()
		c.log.Warn("bind failed", "thread", tid, "via", via, "err", err)
		return frame.Bound{}, fmt.Errorf("bind conn %s to thread %s: %w", c.id, tid, err)
	}
	began := time.Now()

	nb := &binding{c: c, tid: tid, replaying: true}
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return frame.Bound{}, ErrConnClosed
	}
	old := c.binding
	c.binding = nb // from here no event of old reaches the client
	c.mu.Unlock()
	prev := ""
	if old != nil {
		prev = old.tid
		c.s.bus.Leave(old.tid, old)
	}
	c.bound = true

	pos, err := c.s.bus.Join(ctx, tid, nb)
	if err != nil {
		c.unbind(nb)
		if old != nil {
			c.s.bus.DeleteBinding(old.tid, c.id)
		}
		c.s.metrics.BindErrors.Inc()
		c.log.Warn("bind failed", "thread", tid, "previous", prev, "via", via, "err", err)
		return frame.Bound{}, fmt.Errorf("bind conn %s to thread %s: %w", c.id, tid, err)
	}
	// Registry: the new entry first, then the old one's removal, so that a
	// watcher sees a switch rather than an unbind and a bind.
	c.s.bus.PutBinding(bus.Binding{
		ConnectionID: c.id, ThreadID: tid, SidecarID: c.s.cfg.SidecarID, User: c.user,
		RemoteAddr: c.remote, BoundAt: began.UTC(), ReplayFrom: start.String(),
	})
	if old != nil && old.tid != tid {
		c.s.bus.DeleteBinding(old.tid, c.id)
	}
	// Once thread_bound has promised its events, the replay ends when they
	// are sent, however slowly the client takes them (each read has its
	// own timeout; the send queue's rules end a client that stops reading).
	replayed, err := c.replay(c.s.ctx, nb, start, pos, recovered)
	if err != nil {
		c.s.bus.Leave(tid, nb)
		c.unbind(nb)
		c.s.bus.DeleteBinding(tid, c.id)
		if !errors.Is(err, ErrConnClosed) {
			c.s.metrics.BindErrors.Inc()
		}
		c.log.Warn("replay failed", "thread", tid, "previous", prev, "via", via, "err", err)
		return frame.Bound{}, fmt.Errorf("bind conn %s to thread %s: %w", c.id, tid, err)
	}

	c.mu.Lock()
	live := c.binding == nb
	if live {
		for _, ev := range nb.pending {
			nb.queueLocked(ev, liveEvent)
		}
		nb.pending, nb.pendingBytes, nb.replaying = nil, 0, false
	}
	c.mu.Unlock()
	if !live {
		// end() ran meanwhile; its registry delete may have come before
		// the put above: delete again, or the entry would be refreshed
		// for ever.
		c.s.bus.Leave(tid, nb)
		c.s.bus.DeleteBinding(tid, c.id)
		return frame.Bound{}, ErrConnClosed
	}
	took := time.Since(began)
	c.s.metrics.Binds.Inc()
	if prev != "" && prev != tid {
		c.s.metrics.Switches.Inc()
	}
	c.s.metrics.BindDuration.Observe(took.Seconds())
	level := slog.LevelInfo
	if via != viaBackend {
		level = c.bindLogLevel()
	}
	c.log.log(level, "thread bound", []any{"thread", tid, "previous", prev, "via", via,
		"replay_from", start.String(), "replayed", replayed, "recovered", recovered,
		"took", took.Round(time.Microsecond)})
	return frame.Bound{ThreadID: tid, Replayed: replayed, Recovered: recovered, Epoch: c.s.bus.Epoch()}, nil
}

// unbind leaves the connection unbound if nb is still its binding.
func (c *conn) unbind(nb *binding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.binding == nb {
		c.binding = nil
	}
}

// replayStart applies the contract's replay rule. With since, the events
// after it, unless since belongs to another incarnation of the stream
// (epoch mismatch, or beyond the stream's end), when the grace rule applies
// and recovered is false. recovered is also false when retention or a
// size limit already removed events after since.
func (c *conn) replayStart(ctx context.Context, tid string, since *uint64, epoch string) (bus.Start, bool, error) {
	graceFrom := time.Now()
	if !c.bound {
		graceFrom = c.openedAt
	}
	byGrace := bus.Start{Time: graceFrom.Add(-c.s.cfg.ReplayGrace)}
	if since == nil {
		return byGrace, true, nil
	}
	if epoch != "" && epoch != c.s.bus.Epoch() {
		return byGrace, false, nil
	}
	first, last, err := c.s.bus.StreamBounds(ctx)
	if err != nil {
		return bus.Start{}, false, err
	}
	if *since > last {
		return byGrace, false, nil
	}
	if first > *since+1 {
		return bus.Start{AfterSeq: *since}, false, nil
	}
	trimmed, err := c.s.bus.ThreadTrimmed(ctx, tid, *since)
	return bus.Start{AfterSeq: *since}, !trimmed, err
}

// replay queues thread_bound and then the stored events from start through
// pos (the feed position: later events are in nb.pending), pacing itself on
// the client's send queue. It returns how many it replayed.
func (c *conn) replay(ctx context.Context, nb *binding, start bus.Start, pos uint64, recovered bool) (int, error) {
	sent := 0
	head := func(n int) {
		c.send(frame.ThreadBound(frame.Bound{ThreadID: nb.tid, Replayed: n, Recovered: recovered, Epoch: c.s.bus.Epoch()}))
	}
	var stop error
	err := c.s.bus.Replay(ctx, nb.tid, start, pos, head, func(ev bus.Event) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.waitSpaceLocked() || c.binding != nb {
			stop = ErrConnClosed
			return false
		}
		nb.queueLocked(ev, replayEvent)
		sent++
		return true
	})
	if err == nil {
		err = stop
	}
	return sent, err
}

// bindRequest is the body of a conn.<cid>.bind request.
type bindRequest struct {
	ThreadID string          `json:"thread_id"`
	Since    json.RawMessage `json:"since,omitempty"`
	Epoch    string          `json:"epoch,omitempty"`
}

type bindReply struct {
	OK           bool       `json:"ok,omitempty"`
	ConnectionID string     `json:"connection_id,omitempty"`
	ThreadID     string     `json:"thread_id,omitempty"`
	Replayed     int        `json:"replayed"`
	Recovered    bool       `json:"recovered"`
	Epoch        string     `json:"epoch,omitempty"`
	Error        *bindError `json:"error,omitempty"`
}

type bindError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// backendBind serves a conn.<cid>.bind request on its own goroutine, so the
// dispatcher never waits for a replay.
func (c *conn) backendBind(msg *nats.Msg) {
	if !c.async(func() { respond(msg, c.serveBindRequest(msg.Data)) }) {
		respond(msg, bindReply{Error: &bindError{Code: frame.CodeBindFailed, Message: ErrConnClosed.Error()}})
	}
}

func (c *conn) serveBindRequest(data []byte) bindReply {
	var req bindRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return bindReply{Error: &bindError{Code: frame.CodeInvalidJSON, Message: "bind request: " + err.Error()}}
	}
	since, err := frame.ParseSince(req.Since)
	if err != nil {
		return bindReply{Error: &bindError{Code: frame.Code(err), Message: err.Error()}}
	}
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	b, err := c.bind(req.ThreadID, since, req.Epoch, viaBackend)
	if err != nil {
		// The backend's mistakes are answered to the backend; the client
		// hears of a failure only when it left the connection unbound.
		code := frame.Code(err)
		if code == frame.CodeInternal && !errors.Is(err, ErrConnClosed) {
			c.sendError(frame.CodeBindFailed, err.Error())
		}
		if code == frame.CodeInternal {
			code = frame.CodeBindFailed
		}
		return bindReply{Error: &bindError{Code: code, Message: err.Error()}}
	}
	return bindReply{OK: true, ConnectionID: c.id, ThreadID: b.ThreadID, Replayed: b.Replayed, Recovered: b.Recovered, Epoch: b.Epoch}
}

func respond(msg *nats.Msg, r bindReply) {
	if msg.Reply == "" {
		return
	}
	data, _ := json.Marshal(r) // plain struct: always marshals
	_ = msg.Respond(data)      // the requester may have gone; nothing to tell
}
