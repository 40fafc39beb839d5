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

	"github.com/threadbus/threadbus/auth"
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

// conn is one WebSocket connection. It keeps only what it needs while
// idle: its logger and the headers of its publishes are made when used.
type conn struct {
	s        *Server
	id       string
	ws       *websocket.Conn
	cork     *corkConn // ws's connection: the writer batches its writes
	log      connLog
	openedAt time.Time
	remote   string
	sub      *nats.Subscription // conn.<cid>.*
	user     string             // the verified user; "" without authentication
	claims   map[string]any     // the token's claims, kept only for an Authorizer
	expiry   *time.Timer        // closes the connection when its token expires
	lim      *connLimits        // see limits.go; set under mu

	// bindMu serialises binding changes and inbound publishes, so that they
	// happen in the order the frames (and backend binds) arrived.
	bindMu sync.Mutex
	bound  bool // some binding was made before; later ones replay from bind time

	// mu guards the binding and the send queue (see queue.go). Lock order:
	// a feed's lock, then mu. Never call the bus with mu held.
	mu        sync.Mutex
	binding   *binding
	bindingTo string // the thread a bind under way is for, so revocation finds it
	dead      bool   // the connection has ended; nothing more is bound or queued
	pinging   bool   // a ping waits for its pong (see liveness.go)
	reading   bool   // the read loop runs: a pong can be received
	sendQueue

	wg sync.WaitGroup // writer and backend-bind goroutines
}

func newConn(s *Server, ws *websocket.Conn, r *http.Request, id auth.Identity) *conn {
	c := &conn{
		s:        s,
		id:       newConnID(),
		ws:       ws,
		openedAt: time.Now(),
		remote:   r.RemoteAddr,
		user:     id.User,
	}
	if s.cfg.Authorizer != nil {
		c.claims = id.Claims
	}
	c.log.c = c
	c.sendQueue.init(c)
	return c
}

// connLog logs with the connection's attributes, like a child logger of
// the server's, but builds them per record: a child logger kept per
// connection costs its formatted attributes (~0.4 KiB) for the connection's
// life, and a connection logs a handful of records in all.
type connLog struct{ c *conn }

func (l connLog) Debug(msg string, args ...any) { l.log(slog.LevelDebug, msg, args) }
func (l connLog) Info(msg string, args ...any)  { l.log(slog.LevelInfo, msg, args) }
func (l connLog) Warn(msg string, args ...any)  { l.log(slog.LevelWarn, msg, args) }
func (l connLog) Error(msg string, args ...any) { l.log(slog.LevelError, msg, args) }

func (l connLog) log(level slog.Level, msg string, args []any) {
	lg := l.c.s.log
	if !lg.Enabled(context.Background(), level) {
		return
	}
	all := make([]any, 0, 6+len(args))
	all = append(all, "conn", l.c.id, "remote", l.c.remote)
	if l.c.user != "" {
		all = append(all, "user", l.c.user)
	}
	lg.Log(context.Background(), level, msg, append(all, args...)...)
}

// header is the headers of a frame the connection publishes.
// The user is the verified one: a client cannot set headers.
func (c *conn) header() nats.Header {
	h := nats.Header{HeaderConn: {c.id}, HeaderSidecar: {c.s.cfg.SidecarID}}
	if c.user != "" {
		h[HeaderUser] = []string{c.user}
	}
	return h
}

// serve runs the connection on a goroutine of its own until it ends. Only
// the read loop runs on that goroutine's stack (see onFreshStack).
func (c *conn) serve(q url.Values) {
	defer c.s.unregister(c)
	defer c.end()
	opened := false
	onFreshStack(func() { opened = c.open(q) })
	if opened {
		c.readLoop()
	}
}

// open subscribes to the connection's subject, greets the client and binds
// the thread the URL names, if any. It reports whether the connection can
// be served.
func (c *conn) open(q url.Values) bool {
	subj, _ := subjects.ConnAll(c.id) // nuids are valid ids
	var err error
	if c.sub, err = c.s.bus.Conn().ChanSubscribe(subj, c.s.connMsgs); err != nil {
		c.log.Error("subscribe to connection subject", "subject", subj, "err", err)
		c.ws.Close(websocket.StatusInternalError, "subscribe failed")
		return false
	}
	// The backend may bind as soon as it learns the id: the server must
	// know the subscription before the client does.
	if err := c.s.bus.Conn().FlushTimeout(c.s.cfg.BindTimeout); err != nil {
		c.log.Error("flush connection subscription", "subject", subj, "err", err)
		c.ws.Close(websocket.StatusInternalError, "subscribe failed")
		return false
	}
	c.log.Info("connection opened")
	c.send(frame.Established(c.id))
	if tid := q.Get("thread_id"); tid != "" || q.Has("thread_id") {
		c.bindFromQuery(tid, q)
	}
	return true
}

// onFreshStack runs fn on a short-lived goroutine and waits for it. Opening,
// binding, publishing and logging call deep into NATS, JSON and slog; on the
// reader goroutine, which lives as long as the connection, that would grow
// its stack to 8 or 16 KiB for good (a parked goroutine's stack shrinks only
// below a quarter in use).
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
	if _, err := c.bind(tid, since, q.Get("epoch"), viaConnect); err != nil {
		c.sendBindError(err)
	}
}

func (c *conn) readLoop() {
	c.mu.Lock()
	c.reading = true
	c.mu.Unlock()
	for {
		// No context: one with a Done channel costs every idle connection
		// a registered callback (context.AfterFunc) while it waits. The
		// server cuts reads with CloseNow instead (see Server.Close).
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			c.log.Debug("read ended", "err", err, "status", websocket.CloseStatus(err))
			return
		}
		if !c.admitFrame(len(data)) {
			continue
		}
		if typ != websocket.MessageText {
			onFreshStack(func() {
				c.s.metrics.FramesIn.WithLabelValues(metrics.FrameInvalid).Inc()
				c.sendError(frame.CodeBinaryFrame, frame.ErrBinary.Error())
			})
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
		if errors.Is(err, frame.ErrInvalidUTF8) {
			c.s.metrics.Refused.WithLabelValues(metrics.RefusedInvalidUTF8).Inc()
			c.closeWith(websocket.StatusInvalidFramePayloadData, reasonInvalidUTF8) // RFC 6455, 8.1
			return
		}
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
		if _, err := c.bind(f.ThreadID, f.Since, f.Epoch, viaSwitch); err != nil {
			c.sendBindError(err)
		}
		return
	}
	if f.ThreadID != "" && f.ThreadID != c.thread() {
		if _, err := c.bind(f.ThreadID, nil, "", viaFrame); err != nil {
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
		if err := c.s.bus.PublishConnIn(c.id, c.header(), data); err != nil {
			c.warnSampled("publish failed", "err", err)
			c.sendError(frame.CodePublishFailed, err.Error())
		}
		return
	}
	c.s.metrics.FramesIn.WithLabelValues(metrics.FrameThread).Inc()
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.BindTimeout)
	defer cancel()
	if _, err := c.s.bus.PublishThreadIn(ctx, tid, c.header(), data); err != nil {
		c.s.metrics.PublishErrors.Inc()
		c.warnSampled("publish failed", "thread", tid, "err", err)
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
	if errors.Is(err, ErrRateLimited) {
		c.sendError(frame.CodeRateLimited, err.Error())
		return
	}
	if errors.Is(err, subjects.ErrInvalidThreadID) || errors.Is(err, frame.ErrInvalidSince) {
		c.sendError(frame.Code(err), err.Error())
		return
	}
	if errors.Is(err, ErrConnClosed) {
		return
	}
	if code := authzErrorCode(err); code != "" {
		c.sendError(code, err.Error())
		return
	}
	c.sendError(frame.CodeBindFailed, err.Error())
}

// async runs fn on a goroutine the connection waits for when it ends. It
// reports false, running nothing, when the connection has ended already.
func (c *conn) async(fn func()) bool {
	c.mu.Lock()
	dead := c.dead
	if !dead {
		c.wg.Add(1)
	}
	c.mu.Unlock()
	if dead {
		return false
	}
	go func() {
		defer c.wg.Done()
		fn()
	}()
	return true
}

// end releases everything the connection holds; the handler returns next.
func (c *conn) end() {
	if c.expiry != nil {
		c.expiry.Stop()
	}
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
