package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/threadbus/threadbus/auth"
	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/metrics"
	"github.com/threadbus/threadbus/subjects"
)

// Server accepts WebSocket connections and binds them to threads.
type Server struct {
	cfg     Config
	log     *slog.Logger
	bus     *bus.Bus
	metrics *metrics.Metrics

	clientLogs *rate.Limiter // log lines clients can cause, see limits.go
	admission  *admission

	ctx    context.Context // cancelled by Close: ends every connection's I/O
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	conns   map[string]*conn
	users   map[string]int // open connections per verified user
	handler sync.WaitGroup // connection handlers and their goroutines

	connMsgs  chan *nats.Msg // conn.<cid>.* messages of every local connection
	stopped   chan struct{}  // closed by Close to end the dispatcher
	dispatch  sync.WaitGroup
	closeOnce sync.Once
	revokeSub *nats.Subscription // threadbus.authz.revoke, with an Authorizer
}

// connMsgQueue buffers conn.<cid>.* messages for the dispatcher.
const connMsgQueue = 4096

// New returns a Server. Close it to end its connections and goroutines.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := subjects.ValidateConnID(cfg.SidecarID); err != nil {
		return nil, fmt.Errorf("sidecar id: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("sidecar", cfg.SidecarID),
		bus:      cfg.Bus,
		ctx:      ctx,
		cancel:   cancel,
		conns:    make(map[string]*conn),
		users:    make(map[string]int),
		connMsgs: make(chan *nats.Msg, connMsgQueue),
		stopped:  make(chan struct{}),
	}
	s.metrics = metrics.New(cfg.Registry, cfg.Bus)
	if c, ok := cfg.Authorizer.(metrics.AuthzCacheStats); ok {
		metrics.RegisterAuthzCache(cfg.Registry, c)
	}
	if err := s.subscribeRevoke(); err != nil {
		cancel()
		return nil, err
	}
	s.clientLogs = newClientLogLimiter(cfg.Limits)
	s.admission = newAdmission(cfg.Admission)
	s.dispatch.Go(s.dispatchConnMsgs)
	s.dispatch.Go(s.pingLoop)
	return s, nil
}

// ID is the sidecar's id.
func (s *Server) ID() string { return s.cfg.SidecarID }

// Handler serves /ws, /healthz, /readyz and /metrics.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.serveWS)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if s.isClosed() {
		http.Error(w, ErrServerClosed.Error(), http.StatusServiceUnavailable)
		return
	}
	if err := s.bus.Ready(ctx); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, ErrServerClosed.Error(), http.StatusServiceUnavailable)
		return
	}
	s.handler.Add(1)
	s.mu.Unlock()
	release, ok := s.admit(w, r) // see admission.go
	if !ok {
		s.handler.Done()
		return
	}
	detached := false
	defer func() {
		if !detached {
			release()
			s.handler.Done()
		}
	}()

	id, refused := s.authenticate(r)
	cork := &corkConn{}
	ws, err := websocket.Accept(&corkWriter{ResponseWriter: w, cork: cork}, r, &websocket.AcceptOptions{
		// Browsers offer jwt-auth plus jwt.<token> and fail the handshake
		// when none is selected. The token itself is never logged.
		Subprotocols:    []string{auth.SubprotocolJWT},
		OriginPatterns:  s.cfg.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.log.Debug("websocket accept failed", "remote", r.RemoteAddr, "err", err)
		return // Accept has answered the request
	}
	if refused != nil {
		s.refuse(ws, r, refused)
		return
	}
	ws.SetReadLimit(s.cfg.MaxFrameBytes)
	c := newConn(s, ws, r, id)
	c.cork = cork
	if err := s.register(c); err != nil {
		if errors.Is(err, errConnectionLimit) {
			s.refuse(ws, r, &refusal{StatusConnectionLimit, auth.CodeConnectionLimit,
				fmt.Sprintf("user %s has %d connections open, the most this sidecar allows", c.user, s.cfg.MaxConnsPerUser)})
			return
		}
		ws.Close(websocket.StatusServiceRestart, reasonRestart)
		return
	}
	c.watchExpiry(id.Expires)
	// The connection runs on a goroutine of its own and the handler
	// returns: net/http then drops its per-connection state (request,
	// buffered writer, its goroutine's deep stack), which a hijacked
	// connection no longer needs.
	q := r.URL.Query()
	detached = true
	go func() {
		defer s.handler.Done()
		defer release()
		c.serve(q)
	}()
}

func (s *Server) register(c *conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if !s.admitUserLocked(c.user) {
		return errConnectionLimit
	}
	s.conns[c.id] = c
	s.metrics.ConnectionsOpen.Inc()
	return nil
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[c.id] == c {
		delete(s.conns, c.id)
		s.releaseUserLocked(c.user)
		s.metrics.ConnectionsOpen.Dec()
	}
}

func (s *Server) lookup(cid string) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[cid]
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// newConnID returns a fresh connection id; nuids are [A-Za-z0-9]{22}.
func newConnID() string { return nuid.Next() }

// dispatchConnMsgs routes conn.<cid>.out and conn.<cid>.bind messages to
// their connection. It never blocks on a connection: frames are queued and
// binds run on the connection's own goroutine.
func (s *Server) dispatchConnMsgs() {
	for {
		var msg *nats.Msg
		select {
		case msg = <-s.connMsgs:
		case <-s.stopped:
			return
		}
		cid, kind, err := subjects.ConnKind(msg.Subject)
		if err != nil {
			continue
		}
		c := s.lookup(cid)
		if c == nil || c.sub != msg.Sub {
			continue
		}
		switch kind {
		case subjects.ConnKindOut:
			c.send(msg.Data)
		case subjects.ConnKindBind:
			c.backendBind(msg)
		case subjects.ConnKindClose:
			c.backendClose(msg)
		}
	}
}

// Close stops accepting connections, closes every connection with status
// 1012 so clients reconnect and resume, and waits until their goroutines
// have ended or ctx is done, when it cuts the remaining ones. The bus is
// the caller's to close afterwards. Close is idempotent.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := make([]*conn, 0, len(s.conns))
		for _, c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.closeWith(websocket.StatusServiceRestart, reasonRestart)
		}
		done := make(chan struct{})
		go func() { s.handler.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = fmt.Errorf("close connections: %w", ctx.Err())
			s.cancel() // cuts every binding's NATS calls
			s.closeConnsNow()
			<-done
		}
		s.cancel()
		if s.revokeSub != nil {
			_ = s.revokeSub.Unsubscribe() // NATS may be gone already
		}
		// Not close(s.connMsgs): NATS may still hold a message for it.
		close(s.stopped)
		s.dispatch.Wait()
	})
	return err
}

// closeConnsNow cuts every connection's I/O: reads run without a context
// (see conn.readLoop), a writer blocked on a client and a close handshake
// waiting for one end too. It closes the sockets themselves: the
// WebSocket's CloseNow waits for a close handshake in progress.
func (s *Server) closeConnsNow() {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.cork.Close() // the hijacked connection; an error means it was closed already
	}
}

// observeWrite records a frame written to a client.
func (s *Server) observeWrite(f outFrame) {
	switch f.path {
	case replayEvent:
		s.metrics.EventsDelivered.WithLabelValues(metrics.PathReplay).Inc()
	case liveEvent:
		s.metrics.EventsDelivered.WithLabelValues(metrics.PathLive).Inc()
		if !f.at.IsZero() {
			s.metrics.DeliveryLatency.Observe(time.Since(f.at).Seconds())
		}
	}
}
