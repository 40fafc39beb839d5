package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/metrics"
	"github.com/threadbus/threadbus/subjects"
)

// Header names of the contract, set on every inbound frame published.
const (
	HeaderConn    = "Threadbus-Conn"
	HeaderSidecar = "Threadbus-Sidecar"
	HeaderUser    = "Threadbus-User"
)

// conn is one WebSocket connection.
type conn struct {
	s        *Server
	id       string
	ws       *websocket.Conn
	cork     *corkConn // ws's connection: the writer batches its writes
	log      *slog.Logger
	openedAt time.Time
	remote   string
	hdr      nats.Header
	sub      *nats.Subscription // conn.<cid>.*

	// bindMu serialises binding changes and inbound publishes, so that they
	// happen in the order the frames (and backend binds) arrived.
	bindMu sync.Mutex
	bound  bool // some binding was made before; later ones replay from bind time

	// mu guards the binding and the send queue (see queue.go). Lock order:
	// a feed's lock, then mu. Never call the bus with mu held.
	mu      sync.Mutex
	binding *binding
	dead    bool // the connection has ended; nothing more is bound or queued
	sendQueue

	wg sync.WaitGroup // writer and backend-bind goroutines
}

func newConn(s *Server, ws *websocket.Conn, r *http.Request) *conn {
	id := newConnID()
	c := &conn{
		s:        s,
		id:       id,
		ws:       ws,
		openedAt: time.Now(),
		remote:   r.RemoteAddr,
		log:      s.log.With("conn", id, "remote", r.RemoteAddr),
		hdr:      nats.Header{HeaderConn: {id}, HeaderSidecar: {s.cfg.SidecarID}},
	}
	c.sendQueue.init(c)
	return c
}

// serve runs the connection on the HTTP handler's goroutine until it ends.
func (c *conn) serve(q url.Values) {
	defer c.s.unregister(c)
	defer c.end()

	subj, _ := subjects.ConnAll(c.id) // nuids are valid ids
	var err error
	if c.sub, err = c.s.bus.Conn().ChanSubscribe(subj, c.s.connMsgs); err != nil {
		c.log.Error("subscribe to connection subject", "subject", subj, "err", err)
		c.ws.Close(websocket.StatusInternalError, "subscribe failed")
		return
	}
	// The backend may bind as soon as it learns the id: the server must
	// know the subscription before the client does.
	if err := c.s.bus.Conn().FlushTimeout(c.s.cfg.BindTimeout); err != nil {
		c.log.Error("flush connection subscription", "subject", subj, "err", err)
		c.ws.Close(websocket.StatusInternalError, "subscribe failed")
		return
	}
	c.log.Info("connection opened")
	c.send(frame.Established(c.id))
	if tid := q.Get("thread_id"); tid != "" || q.Has("thread_id") {
		onFreshStack(func() { c.bindFromQuery(tid, q) })
	}
	c.readLoop()
}

// onFreshStack runs fn on a short-lived goroutine and waits for it. Binding
// and publishing call deep into NATS and JSON; on the reader goroutine, which
// lives as long as the connection, that would grow its stack to 16 KiB for
// good (a parked goroutine's stack shrinks only below a quarter in use).
func onFreshStack(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

func (c *conn) bindFromQuery(tid string, q url.Values) {
	var since *uint64
	if s := q.Get("since"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			c.sendError(frame.CodeInvalidSince, frame.ErrInvalidSince.Error()+", got "+strconv.Quote(s))
			return
		}
		since = &n
	}
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	if _, err := c.bind(tid, since, q.Get("epoch"), "connect"); err != nil {
		c.sendBindError(err)
	}
}

func (c *conn) readLoop() {
	for {
		typ, data, err := c.ws.Read(c.s.ctx)
		if err != nil {
			c.log.Debug("read ended", "err", err, "status", websocket.CloseStatus(err))
			return
		}
		if typ != websocket.MessageText {
			c.s.metrics.FramesIn.WithLabelValues(metrics.FrameInvalid).Inc()
			c.sendError(frame.CodeBinaryFrame, frame.ErrBinary.Error())
			continue
		}
		onFreshStack(func() { c.handle(data) })
	}
}

// handle acts on one client frame.
func (c *conn) handle(data []byte) {
	f, err := frame.Parse(data)
	if err != nil {
		c.s.metrics.FramesIn.WithLabelValues(metrics.FrameInvalid).Inc()
		c.sendError(frame.Code(err), err.Error())
		return
	}
	if f.Type == frame.TypePing {
		c.s.metrics.FramesIn.WithLabelValues(metrics.FramePing).Inc()
		c.send(frame.Pong(data))
		return
	}
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	if f.Type == frame.TypeSwitchThread {
		c.s.metrics.FramesIn.WithLabelValues(metrics.FrameSwitch).Inc()
		if _, err := c.bind(f.ThreadID, f.Since, f.Epoch, "switch_thread"); err != nil {
			c.sendBindError(err)
		}
		return
	}
	if f.ThreadID != "" && f.ThreadID != c.thread() {
		if _, err := c.bind(f.ThreadID, nil, "", "frame"); err != nil {
			c.sendBindError(err)
			return // never publish a frame to a thread it could not be bound to
		}
	}
	c.publish(data)
}

// publish sends a client frame on: stored on thread.<tid>.in when bound,
// core NATS on conn.<cid>.in when not. Called with bindMu held.
func (c *conn) publish(data []byte) {
	tid := c.thread()
	if tid == "" {
		c.s.metrics.FramesIn.WithLabelValues(metrics.FrameConn).Inc()
		if err := c.s.bus.PublishConnIn(c.id, c.hdr, data); err != nil {
			c.log.Warn("publish failed", "err", err)
			c.sendError(frame.CodePublishFailed, err.Error())
		}
		return
	}
	c.s.metrics.FramesIn.WithLabelValues(metrics.FrameThread).Inc()
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.BindTimeout)
	defer cancel()
	if _, err := c.s.bus.PublishThreadIn(ctx, tid, c.hdr, data); err != nil {
		c.s.metrics.PublishErrors.Inc()
		c.log.Warn("publish failed", "thread", tid, "err", err)
		c.sendError(frame.CodePublishFailed, "frame not stored, send it again: "+err.Error())
	}
}

func (c *conn) thread() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.binding == nil {
		return ""
	}
	return c.binding.tid
}

func (c *conn) sendError(code, msg string) { c.send(frame.Error(code, msg)) }

func (c *conn) sendBindError(err error) {
	if errors.Is(err, subjects.ErrInvalidThreadID) || errors.Is(err, frame.ErrInvalidSince) {
		c.sendError(frame.Code(err), err.Error())
		return
	}
	if errors.Is(err, ErrConnClosed) {
		return
	}
	c.sendError(frame.CodeBindFailed, err.Error())
}

// end releases everything the connection holds; the handler returns next.
func (c *conn) end() {
	if c.sub != nil {
		_ = c.sub.Unsubscribe()
	}
	c.mu.Lock()
	c.dead = true
	b := c.binding
	c.binding = nil
	c.mu.Unlock()
	if b != nil {
		c.s.bus.Leave(b.tid, b)
		c.s.bus.DeleteBinding(b.tid, c.id)
	}
	c.ws.CloseNow() // ends a writer blocked on a client that reads nothing
	c.wg.Wait()
	c.mu.Lock()
	c.sendQueue.drop()
	c.mu.Unlock()
	thread := ""
	if b != nil {
		thread = b.tid
	}
	c.log.Info("connection closed", "thread", thread)
}
