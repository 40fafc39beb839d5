package sidecar

import (
	"context"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/metrics"
)

// sendQueue is a connection's bounded queue of outgoing frames, guarded by
// conn.mu. A writer goroutine runs only while frames are queued, so an idle
// connection costs no goroutine but its reader. What it holds in all, the
// queued frames and the batch being written (in the cork's buffer), stays
// within SendQueueBytes, plus one frame larger than that.
type sendQueue struct {
	c        *conn
	frames   []outFrame
	bytes    int
	inflight int       // bytes of the batch the writer is writing
	writing  bool      // a writer goroutine is running
	space    sync.Cond // signalled when the writer takes frames, or on close

	closeCode   websocket.StatusCode // set once by closeWith; the writer sends it
	closeReason string
}

// outFrame is a queued frame. Events carry their path and stream time, for
// the delivery metrics.
type outFrame struct {
	data []byte
	path eventPath
	at   time.Time // the stream's timestamp of a live event
}

type eventPath uint8

const (
	notEvent eventPath = iota
	replayEvent
	liveEvent
)

func (q *sendQueue) init(c *conn) {
	q.c = c
	q.space.L = &c.mu
}

// send queues a frame for the client. It never blocks.
func (c *conn) send(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.enqueueLocked(outFrame{data: b})
}

// enqueueLocked queues b, or closes the connection as a slow consumer when
// the queue is full. A single frame larger than the whole queue still goes
// through an empty queue.
func (c *conn) enqueueLocked(f outFrame) {
	q := &c.sendQueue
	if c.dead || q.closeCode != 0 {
		return
	}
	if held := q.bytes + q.inflight; held+len(f.data) > c.s.cfg.SendQueueBytes && held > 0 {
		c.warnSampled("send queue overflow, closing", "queued_bytes", q.bytes, "writing_bytes", q.inflight, "limit", c.s.cfg.SendQueueBytes)
		if f.path != notEvent {
			c.s.metrics.EventsDropped.WithLabelValues(metrics.ReasonSlowConsumer).Inc()
		}
		c.closeWithLocked(websocket.StatusPolicyViolation, reasonSlowConsumer)
		return
	}
	q.frames = append(q.frames, f)
	q.bytes += len(f.data)
	c.startWriterLocked()
}

// waitSpaceLocked blocks while the queue is more than half full, so a long
// replay is paced by the client instead of overflowing the queue. It returns
// false when the connection is closing.
func (c *conn) waitSpaceLocked() bool {
	q := &c.sendQueue
	for q.bytes+q.inflight > c.s.cfg.SendQueueBytes/2 && !c.dead && q.closeCode == 0 {
		q.space.Wait()
	}
	return !c.dead && q.closeCode == 0
}

func (c *conn) startWriterLocked() {
	if c.sendQueue.writing {
		return
	}
	c.sendQueue.writing = true
	c.wg.Go(c.writeLoop)
}

// closeWith closes the connection with a status once the batch being written
// now, if any, is out. Queued frames are dropped.
func (c *conn) closeWith(code websocket.StatusCode, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeWithLocked(code, reason)
}

// closeWithError sends an error frame, then closes with a status and
// reason: queued frames are dropped, the error frame is the last the client
// reads.
func (c *conn) closeWithError(status websocket.StatusCode, reason, code, msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sendQueue.closeCode != 0 || c.dead {
		return
	}
	c.closeWithLocked(status, reason)
	c.sendQueue.frames = append(c.sendQueue.frames, outFrame{data: frame.Error(code, msg)})
}

func (c *conn) closeWithLocked(code websocket.StatusCode, reason string) {
	q := &c.sendQueue
	if q.closeCode != 0 || c.dead {
		return
	}
	q.closeCode, q.closeReason = code, reason
	if n := q.events(); n > 0 && code == websocket.StatusPolicyViolation {
		c.s.metrics.EventsDropped.WithLabelValues(metrics.ReasonSlowConsumer).Add(float64(n))
	}
	q.drop()
	q.space.Broadcast()
	c.startWriterLocked()
}

// events counts the queued event frames.
func (q *sendQueue) events() int {
	n := 0
	for _, f := range q.frames {
		if f.path != notEvent {
			n++
		}
	}
	return n
}

func (q *sendQueue) drop() {
	clear(q.frames)
	q.frames, q.bytes, q.inflight = nil, 0, 0
}

// writeLoop writes queued frames until the queue is empty, then exits; it
// sends the close status when one is set.
func (c *conn) writeLoop() {
	q := &c.sendQueue
	for {
		c.mu.Lock()
		batch := q.frames
		q.frames, q.bytes, q.inflight = nil, 0, q.bytes
		code, reason := q.closeCode, q.closeReason
		if len(batch) == 0 && code == 0 {
			q.writing = false
			q.space.Broadcast() // waiters may wait on the batch just written
			c.mu.Unlock()
			return
		}
		q.space.Broadcast()
		c.mu.Unlock()

		// Frames go to memory; uncork writes the batch with one syscall
		// and bounds it with the write timeout.
		c.cork.cork()
		n := 0
		var err error
		for i, f := range batch {
			if i > 0 && c.closing() {
				break
			}
			if err = c.ws.Write(context.Background(), websocket.MessageText, f.data); err != nil {
				break
			}
			batch[i].data = nil // in the cork now: hold it once
			n++
		}
		if uerr := c.cork.uncork(c.s.cfg.WriteTimeout); err == nil {
			err = uerr
		}
		if err != nil {
			c.log.Debug("write failed", "err", err)
			c.ws.CloseNow()
			c.finishWriter()
			return
		}
		for _, f := range batch[:n] {
			c.s.observeWrite(f)
		}
		if code != 0 {
			if grace, ok := closeGrace[reason]; ok {
				// The client broke a limit: it has a moment to read the
				// close, not the handshake's 5 s to keep sending.
				t := time.AfterFunc(grace, func() { c.ws.CloseNow() })
				defer t.Stop()
			}
			err := c.ws.Close(code, reason)
			c.log.Info("closed by sidecar", "status", int(code), "reason", reason, "err", err)
			c.finishWriter()
			return
		}
	}
}

func (c *conn) closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sendQueue.closeCode != 0 || c.dead
}

// finishWriter marks the connection as unable to write anything more.
func (c *conn) finishWriter() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dead = true
	c.sendQueue.drop()
	c.sendQueue.space.Broadcast()
}
