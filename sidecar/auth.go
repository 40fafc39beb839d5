package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/auth"
	"github.com/threadbus/threadbus/frame"
	"github.com/threadbus/threadbus/metrics"
	"github.com/threadbus/threadbus/subjects"
)

// Close statuses of contract v2.
const (
	StatusTokenExpired    websocket.StatusCode = 4001
	StatusUnauthorized    websocket.StatusCode = 4401
	StatusClosedByBackend websocket.StatusCode = 4403
	StatusConnectionLimit websocket.StatusCode = 4429
)

// codeClosedByBackend is the error frame's code before a conn.<cid>.close.
const codeClosedByBackend = "closed_by_backend"

// msgTokenExpired explains 4001, at the handshake and when an open
// connection's token expires.
const msgTokenExpired = "token expired: get a fresh token and reconnect with since"

// refusal is why a handshake is answered with an error frame and a close.
type refusal struct {
	status websocket.StatusCode
	code   string // error frame code, metrics label and close reason
	msg    string
}

// authenticate verifies the handshake's token. It runs before the upgrade;
// a refusal is sent after it, since browsers cannot read an HTTP 401 on a
// WebSocket. The token appears in no log, frame or error.
func (s *Server) authenticate(r *http.Request) (auth.Identity, *refusal) {
	if s.cfg.Verifier == nil {
		return auth.Identity{}, nil
	}
	tok, _, err := auth.TokenFromRequest(r, s.cfg.TokenQueryParam)
	if err == nil {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.BindTimeout)
		var id auth.Identity
		id, err = s.cfg.Verifier.Verify(ctx, tok)
		cancel()
		if err == nil {
			return id, nil
		}
	}
	if errors.Is(err, auth.ErrTokenExpired) {
		return auth.Identity{}, &refusal{StatusTokenExpired, auth.CodeTokenExpired, msgTokenExpired}
	}
	return auth.Identity{}, &refusal{StatusUnauthorized, auth.CodeUnauthorized, "unauthorized: " + err.Error()}
}

// refuse answers an accepted WebSocket that may not be served with an error
// frame and a close status, and counts it.
func (s *Server) refuse(ws *websocket.Conn, r *http.Request, why *refusal) {
	s.metrics.AuthRefused.WithLabelValues(why.code).Inc()
	// Within the budget of client-caused lines: bad tokens in a loop must
	// not steer the log volume.
	if s.clientLogs.Allow() {
		s.log.Info("connection refused", "remote", r.RemoteAddr, "code", why.code, "status", int(why.status), "reason", why.msg)
	} else {
		s.metrics.LogsSuppressed.Inc()
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.WriteTimeout)
	defer cancel()
	if err := ws.Write(ctx, websocket.MessageText, frame.Error(why.code, why.msg)); err != nil {
		ws.CloseNow()
		return
	}
	_ = ws.Close(why.status, why.code) // waits a bounded time for the client's close
}

// admitUserLocked counts a connection of user against MaxConnsPerUser.
// Called with s.mu held, with the connection map it mirrors; release with
// releaseUserLocked.
func (s *Server) admitUserLocked(user string) bool {
	if user == "" {
		return true
	}
	if s.cfg.MaxConnsPerUser > 0 && s.users[user] >= s.cfg.MaxConnsPerUser {
		return false
	}
	s.users[user]++
	return true
}

func (s *Server) releaseUserLocked(user string) {
	if user == "" {
		return
	}
	if s.users[user] <= 1 {
		delete(s.users, user)
		return
	}
	s.users[user]--
}

// watchExpiry closes the connection with 4001 when its token expires (plus
// the leeway), so the client gets a fresh token and resumes with since.
func (c *conn) watchExpiry(exp time.Time) {
	if exp.IsZero() {
		return
	}
	c.expiry = time.AfterFunc(time.Until(exp.Add(c.s.cfg.TokenLeeway)), func() {
		c.s.metrics.AuthRefused.WithLabelValues(metrics.RefusedTokenExpired).Inc()
		c.log.Info("token expired, closing")
		c.closeWithError(StatusTokenExpired, auth.CodeTokenExpired, auth.CodeTokenExpired, msgTokenExpired)
	})
}

// Via values of binds, as logged; authzVia maps the client-caused ones to
// the hook's.
const (
	viaConnect = "connect"
	viaSwitch  = "switch_thread"
	viaFrame   = "frame"
	viaBackend = "backend"
)

var authzVia = map[string]string{viaConnect: auth.ViaURL, viaSwitch: auth.ViaSwitch, viaFrame: auth.ViaFrame}

// errForbidden is a bind the authorizer denied; code and message are the
// hook's.
type errForbidden struct {
	tid, code, msg string
}

func (e *errForbidden) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("thread %s: forbidden", e.tid)
	}
	return fmt.Sprintf("thread %s: forbidden: %s", e.tid, e.msg)
}

// authorize asks the Authorizer whether the connection's user may bind tid.
// Binds the backend asked for are trusted. An error is a denial: the
// binding and the frame that asked for it go no further.
func (c *conn) authorize(ctx context.Context, tid, via string) error {
	a := c.s.cfg.Authorizer
	hv, asks := authzVia[via]
	if a == nil || !asks {
		return nil
	}
	d, err := a.Authorize(ctx, auth.Request{
		User: c.user, ThreadID: tid, ConnectionID: c.id, SidecarID: c.s.cfg.SidecarID,
		Via: hv, Claims: c.claims,
	})
	switch {
	case err != nil:
		c.s.metrics.AuthzDecisions.WithLabelValues(metrics.AuthzUnavailable).Inc()
		c.warnSampled("authorization unavailable, bind denied", "thread", tid, "via", via, "err", err)
		if !errors.Is(err, auth.ErrUnavailable) {
			err = fmt.Errorf("%w: %v", auth.ErrUnavailable, err)
		}
		return fmt.Errorf("thread %s: %w", tid, err)
	case !d.Allow:
		c.s.metrics.AuthzDecisions.WithLabelValues(metrics.AuthzDeny).Inc()
		code := d.Code
		if code == "" {
			code = auth.CodeThreadForbidden
		}
		c.log.log(c.bindLogLevel(), "bind denied", []any{"thread", tid, "via", via, "code", code})
		return &errForbidden{tid: tid, code: code, msg: d.Message}
	}
	c.s.metrics.AuthzDecisions.WithLabelValues(metrics.AuthzAllow).Inc()
	return nil
}

// authzErrorCode returns the error frame's code for an authorization
// failure, or "" for another error.
func authzErrorCode(err error) string {
	var fe *errForbidden
	switch {
	case errors.As(err, &fe):
		return fe.code
	case errors.Is(err, auth.ErrUnavailable):
		return auth.CodeAuthzUnavailable
	}
	return ""
}

// revoker is an Authorizer that caches decisions (auth.Cache).
type revoker interface{ Revoke(user, thread string) }

// subscribeRevoke makes the sidecar obey threadbus.authz.revoke.
func (s *Server) subscribeRevoke() error {
	if s.cfg.Authorizer == nil {
		return nil
	}
	sub, err := s.bus.Conn().Subscribe(subjects.AuthzRevoke, s.revoke)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subjects.AuthzRevoke, err)
	}
	if err := s.bus.Conn().FlushTimeout(s.cfg.BindTimeout); err != nil {
		_ = sub.Unsubscribe() // New fails: nothing may call the Server's revoke
		return fmt.Errorf("subscribe %s: %w", subjects.AuthzRevoke, err)
	}
	s.revokeSub = sub
	return nil
}

// revoke forgets the matching allowed pairs and unbinds the matching
// connections, each on its own goroutine: a connection may be replaying.
func (s *Server) revoke(msg *nats.Msg) {
	user, tid, err := auth.ParseRevoke(msg.Data)
	if err != nil {
		s.log.Warn("bad revoke message", "subject", msg.Subject, "err", err)
		return
	}
	if r, ok := s.cfg.Authorizer.(revoker); ok {
		r.Revoke(user, tid)
	}
	s.mu.Lock()
	var hit []*conn
	for _, c := range s.conns {
		if user == "" || c.user == user {
			hit = append(hit, c)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, c := range hit {
		if !c.mayBeBoundTo(tid) {
			continue
		}
		n++
		c.async(func() { c.revokeBinding(tid) })
	}
	s.log.Info("authorization revoked", "user", user, "thread", tid, "connections", n)
}

// mayBeBoundTo reports whether the connection is bound, or being bound, to
// tid ("": to any thread).
func (c *conn) mayBeBoundTo(tid string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bindingTo != "" && (tid == "" || c.bindingTo == tid) {
		return true
	}
	return c.binding != nil && (tid == "" || c.binding.tid == tid)
}

// revokeBinding unbinds the connection from tid ("": from any thread) if it
// is bound to it once the bind under way, if any, has ended: bindMu orders
// the revocation after a bind whose hook answered before it.
func (c *conn) revokeBinding(tid string) {
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	c.mu.Lock()
	b := c.binding
	if b == nil || (tid != "" && b.tid != tid) || c.dead {
		c.mu.Unlock()
		return
	}
	tid = b.tid
	c.binding = nil // nothing of tid reaches the client from here
	c.mu.Unlock()
	c.s.bus.Leave(tid, b)
	c.s.bus.DeleteBinding(tid, c.id)
	c.s.metrics.AuthzDecisions.WithLabelValues(metrics.AuthzRevoked).Inc()
	c.log.Info("thread unbound", "thread", tid, "via", "revoke")
	c.sendError(auth.CodeThreadForbidden, "thread "+tid+": access revoked")
}

// closeRequest is the body of a conn.<cid>.close request.
type closeRequest struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// backendClose serves conn.<cid>.close: an error frame, then the close
// status the backend chose (4000-4999; by default 4403).
func (c *conn) backendClose(msg *nats.Msg) {
	var req closeRequest
	if len(msg.Data) > 0 {
		if err := json.Unmarshal(msg.Data, &req); err != nil {
			respondClose(msg, fmt.Errorf("close request: %w", err))
			return
		}
	}
	status := StatusClosedByBackend
	if req.Code != 0 {
		if req.Code < 4000 || req.Code > 4999 {
			respondClose(msg, fmt.Errorf("close request: code %d is not in 4000-4999", req.Code))
			return
		}
		status = websocket.StatusCode(req.Code)
	}
	reason := req.Reason
	if reason == "" {
		reason = codeClosedByBackend
	}
	if len(reason) > maxCloseReason {
		reason = strings.ToValidUTF8(reason[:maxCloseReason], "")
	}
	c.log.Info("closed by backend", "status", int(status), "reason", reason)
	c.closeWithError(status, reason, codeClosedByBackend, reason)
	respondClose(msg, nil)
}

// maxCloseReason is the longest close reason a close frame can carry
// (125 bytes of payload less the 2-byte status), less a little; a cut
// through a character drops that character.
const maxCloseReason = 120

func respondClose(msg *nats.Msg, err error) {
	if err != nil {
		respond(msg, bindReply{Error: &bindError{Code: frame.CodeInvalidFrame, Message: err.Error()}})
		return
	}
	if msg.Reply != "" {
		_ = msg.Respond([]byte(`{"ok":true}`)) // the requester may have gone
	}
}
