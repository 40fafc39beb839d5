package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"
)

// Contract v2 close statuses and error codes.
const (
	statusTokenExpired    websocket.StatusCode = 4001
	statusUnauthorized    websocket.StatusCode = 4401
	statusClosedByBackend websocket.StatusCode = 4403
	statusConnectionLimit websocket.StatusCode = 4429

	codeUnauthorized     = "unauthorized"
	codeTokenExpired     = "token_expired"
	codeThreadForbidden  = "thread_forbidden"
	codeAuthzUnavailable = "authz_unavailable"
	codeConnectionLimit  = "connection_limit"
)

// authSidecar is a sidecar started with --auth jwt and an HS256 secret.
type authSidecar struct {
	*sidecar
	secret     []byte
	secretFile string
}

func startAuthSidecar(t testing.TB, args ...string) *authSidecar {
	t.Helper()
	secret := []byte("e2e-hmac-secret-at-least-32-bytes-" + t.Name())
	file := filepath.Join(t.TempDir(), "jwt-secret")
	if err := os.WriteFile(file, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	all := append([]string{"--auth", "jwt", "--jwt-secret-file", file}, args...)
	return &authSidecar{sidecar: startSidecar(t, sidecarConfig{Args: all}), secret: secret, secretFile: file}
}

// token signs an HS256 token for user that expires after ttl.
func (s *authSidecar) token(t testing.TB, user string, ttl time.Duration) string {
	t.Helper()
	return signHS256(t, s.secret, jwt.MapClaims{"sub": user, "exp": time.Now().Add(ttl).Unix()})
}

func signHS256(t testing.TB, secret []byte, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func bearer(tok, query string) dialOptions {
	return dialOptions{Query: query, Header: http.Header{"Authorization": {"Bearer " + tok}}}
}

// dialRefused dials a handshake the sidecar must refuse after the upgrade:
// it returns the error frame and the close that followed it.
func dialRefused(t testing.TB, s *sidecar, opts dialOptions) (errorPayload, websocket.CloseError) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	ws, _, err := websocket.Dial(ctx, s.wsURL(opts.Query), &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr}, HTTPHeader: opts.Header, Subprotocols: opts.Subprotocols,
	})
	if err != nil {
		t.Fatalf("dial: %v (a refusal must come after the upgrade)", err)
	}
	defer ws.CloseNow()
	typ, data, err := ws.Read(ctx)
	if err != nil || typ != websocket.MessageText {
		t.Fatalf("first frame: %v %v, want an error frame", typ, err)
	}
	f := parseFrame(data, false)
	var p errorPayload
	if f.Type != typeError || json.Unmarshal(f.Payload, &p) != nil {
		t.Fatalf("first frame %s, want an error frame", f)
	}
	_, _, err = ws.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("after the error frame: %v, want a close", err)
	}
	return p, ce
}

// authzResponder answers threadbus.authz.bind for a test and counts calls.
type authzResponder struct {
	calls atomic.Int64
	mu    sync.Mutex
	reqs  []authzRequest
}

type authzRequest struct {
	User         string         `json:"user"`
	ThreadID     string         `json:"thread_id"`
	ConnectionID string         `json:"connection_id"`
	SidecarID    string         `json:"sidecar_id"`
	Via          string         `json:"via"`
	Claims       map[string]any `json:"claims"`
}

// startAuthzResponder answers with decide's reply; a nil reply answers
// nothing (the sidecar's request times out).
func startAuthzResponder(t testing.TB, nc *nats.Conn, decide func(authzRequest) any) *authzResponder {
	t.Helper()
	r := &authzResponder{}
	sub, err := nc.QueueSubscribe("threadbus.authz.bind", "backend", func(m *nats.Msg) {
		var req authzRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("authz request %s: %v", m.Data, err)
			return
		}
		r.calls.Add(1)
		r.mu.Lock()
		r.reqs = append(r.reqs, req)
		r.mu.Unlock()
		if reply := decide(req); reply != nil {
			b, _ := json.Marshal(reply)
			_ = m.Respond(b)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

// ownThreads allows a user the threads named <user>-*.
func ownThreads(req authzRequest) any {
	if strings.HasPrefix(req.ThreadID, req.User+"-") {
		return map[string]any{"allow": true, "ttl_s": 60}
	}
	return map[string]any{"allow": false, "code": codeThreadForbidden, "message": "not your thread"}
}

// A user reads and writes its own threads; what it publishes carries the
// verified user, whatever the frame says; the registry shows the user.
func TestAuthOwnThreads(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "nats")
	a := newAgent(t, s.NATSURL)
	hook := startAuthzResponder(t, a.nc, ownThreads)
	in, err := a.nc.SubscribeSync("thread.alice-1.in")
	if err != nil {
		t.Fatal(err)
	}

	seqs := a.mustPublish(t, "alice-1", 3)
	c := dial(t, s.sidecar, "alice", bearer(s.token(t, "alice", time.Hour), "thread_id=alice-1&since=0"))
	c.expectBound("alice-1")
	c.expectEvents("alice-1", seqs)

	raw := `{"type":"user_message","payload":{"content":"hi","thread_id":"alice-1"},"Threadbus-User":"mallory","headers":{"Threadbus-User":"mallory"}}`
	c.send(raw)
	m, err := in.NextMsg(waitTimeout)
	if err != nil {
		t.Fatalf("inbound frame: %v", err)
	}
	if got := m.Header.Values("Threadbus-User"); len(got) != 1 || got[0] != "alice" {
		t.Errorf("Threadbus-User %q, want exactly [alice]", got)
	}
	if string(m.Data) != raw {
		t.Errorf("stored %s, want the frame unchanged", m.Data)
	}

	hook.mu.Lock()
	req := hook.reqs[0]
	hook.mu.Unlock()
	if req.User != "alice" || req.ThreadID != "alice-1" || req.Via != "url" || req.ConnectionID != c.CID || req.SidecarID == "" || req.Claims["sub"] != "alice" {
		t.Errorf("hook request %+v, want alice, alice-1, via url, the connection and sidecar ids, claims with sub", req)
	}

	r := cliOK(t, s.NATSURL, "bindings", "ls", "--user", "alice", "--json")
	var b struct {
		ConnectionID string `json:"connection_id"`
		User         string `json:"user"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.Stdout)), &b); err != nil || b.User != "alice" || b.ConnectionID != c.CID {
		t.Errorf("bindings ls --user alice: %q, want alice's connection %s", r.Stdout, c.CID)
	}
	if r := cliOK(t, s.NATSURL, "bindings", "ls", "--user", "bob", "--json"); r.Stdout != "" {
		t.Errorf("bindings ls --user bob: %q, want nothing", r.Stdout)
	}
}

// Each of the three binds a client causes is refused for a thread the hook
// denies: nothing of it is delivered or stored, and the connection keeps
// its binding.
func TestAuthForbiddenBinds(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "nats")
	a := newAgent(t, s.NATSURL)
	hook := startAuthzResponder(t, a.nc, ownThreads)
	a.mustPublish(t, "bob-secret", 2)
	tok := s.token(t, "alice", time.Hour)

	// ?thread_id= at connect: refused, the connection stays open and unbound.
	c0 := dial(t, s.sidecar, "url", bearer(tok, "thread_id=bob-secret&since=0"))
	c0.expectError(codeThreadForbidden)
	c0.expectQuiet()

	c := dial(t, s.sidecar, "alice", bearer(tok, "thread_id=alice-1"))
	c.expectBound("alice-1")

	// switch_thread: refused, still bound to alice-1.
	c.send(`{"type":"switch_thread","payload":{"thread_id":"bob-secret","since":0}}`)
	c.expectError(codeThreadForbidden)
	// A frame naming the thread: refused and not published.
	c.send(`{"type":"user_message","payload":{"content":"steal","thread_id":"bob-secret"}}`)
	c.expectError(codeThreadForbidden)
	c.send(`{"type":"user_message","thread_id":"bob-secret","payload":{"content":"steal"}}`)
	c.expectError(codeThreadForbidden)
	c.expectQuiet()

	live := a.mustPublish(t, "alice-1", 2)
	a.mustPublish(t, "bob-secret", 2)
	c.expectEvents("alice-1", live)
	c.expectQuiet()
	c0.expectQuiet()
	a.expectCount(t, "thread.bob-secret.in", 0, "frames naming a forbidden thread")
	a.expectCount(t, "thread.alice-1.in", 0, "frames naming a forbidden thread")
	if n := hook.calls.Load(); n != 5 {
		t.Errorf("hook called %d times, want 5 (one allow, four denials: denials are not cached)", n)
	}
}

// Without a usable answer the bind is denied: no responders, or a hook
// that does not answer within --authz-timeout.
func TestAuthzFailsClosed(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "nats", "--authz-timeout", "300ms")
	a := newAgent(t, s.NATSURL)
	tok := s.token(t, "alice", time.Hour)

	c := dial(t, s.sidecar, "no-responders", bearer(tok, "thread_id=alice-1"))
	c.expectError(codeAuthzUnavailable)
	c.expectQuiet()

	hook := startAuthzResponder(t, a.nc, func(authzRequest) any { return nil })
	began := time.Now()
	c.send(`{"type":"switch_thread","payload":{"thread_id":"alice-1"}}`)
	c.expectError(codeAuthzUnavailable)
	t.Logf("silent hook denied after %v", time.Since(began).Round(time.Millisecond))
	c.send(`{"type":"user_message","payload":{"content":"x","thread_id":"alice-1"}}`)
	c.expectError(codeAuthzUnavailable)
	c.expectQuiet()
	if hook.calls.Load() != 2 {
		t.Errorf("silent hook asked %d times, want 2", hook.calls.Load())
	}
	a.expectCount(t, "thread.alice-1.in", 0, "frames of a bind that was not authorized")
}

// Allowed pairs are cached for the reply's ttl_s; a revocation drops them
// and unbinds the connections.
func TestAuthzCacheAndRevoke(t *testing.T) {
	t.Parallel()
	// The test switches in a loop until a cache entry expires: over the
	// default frame and bind rates.
	s := startAuthSidecar(t, "--authz", "nats", "--bind-rate=-1", "--frame-rate=-1")
	a := newAgent(t, s.NATSURL)
	hook := startAuthzResponder(t, a.nc, func(req authzRequest) any {
		ttl := 60
		if req.ThreadID == "alice-short" {
			ttl = 1
		}
		return map[string]any{"allow": true, "ttl_s": ttl}
	})
	tok := s.token(t, "alice", time.Hour)

	var cs []*client
	for i := range 4 {
		c := dial(t, s.sidecar, fmt.Sprintf("alice%d", i), bearer(tok, "thread_id=alice-1"))
		c.expectBound("alice-1")
		cs = append(cs, c)
	}
	if n := hook.calls.Load(); n != 1 {
		t.Fatalf("4 binds of one (user, thread) called the hook %d times, want 1", n)
	}

	// ttl_s 1: a later bind asks again.
	cs[0].send(`{"type":"switch_thread","payload":{"thread_id":"alice-short"}}`)
	cs[0].expectBound("alice-short")
	before := hook.calls.Load()
	began := time.Now()
	deadline := began.Add(waitTimeout)
	for hook.calls.Load() == before {
		if time.Now().After(deadline) {
			t.Fatalf("a cached pair with ttl_s 1 was never asked again")
		}
		cs[0].send(`{"type":"switch_thread","payload":{"thread_id":"alice-short"}}`)
		cs[0].expectBound("alice-short")
	}
	t.Logf("ttl_s 1 entry asked again after %v", time.Since(began).Round(time.Millisecond))

	// Revoke alice-1 for alice: the three connections bound to it are
	// unbound, the one on alice-short is not.
	// Revocations that are not JSON objects revoke nothing (json.Unmarshal
	// would read null as {}: everything).
	for _, bad := range []string{`null`, `[]`, `{"user":7}`} {
		if err := a.nc.Publish("threadbus.authz.revoke", []byte(bad)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := waitUntil(ctx, func() bool {
		return len(s.logs.grep("bad revoke message"))+len(s.logs.grep("authorization revoked")) >= 3
	}); err != nil {
		t.Fatalf("the sidecar did not take the 3 revoke messages: %v", err)
	}
	for _, c := range cs {
		c.expectQuiet()
	}
	calls := hook.calls.Load()
	if err := a.nc.Publish("threadbus.authz.revoke", []byte(`{"user":"alice","thread_id":"alice-1"}`)); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs[1:] {
		c.expectError(codeThreadForbidden)
	}
	a.mustPublish(t, "alice-1", 1)
	short := a.mustPublish(t, "alice-short", 1)
	for _, c := range cs[1:] {
		c.expectQuiet()
	}
	cs[0].expectEvents("alice-short", short)
	// The pair was forgotten: binding again asks the hook.
	cs[1].send(`{"type":"switch_thread","payload":{"thread_id":"alice-1"}}`)
	cs[1].expectBound("alice-1")
	if got := hook.calls.Load(); got != calls+1 {
		t.Errorf("bind after revoke: %d hook calls, want 1", got-calls)
	}
	if r := cliOK(t, s.NATSURL, "bindings", "ls", "--thread", "alice-1", "--json"); strings.Count(r.Stdout, "\n") != 1 {
		t.Errorf("bindings of alice-1 after revoke and one rebind:\n%s", r.Stdout)
	}
}

// conn.<cid>.close closes one connection with the backend's status.
func TestBackendClose(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "none")
	a := newAgent(t, s.NATSURL)
	c := dial(t, s.sidecar, "alice", bearer(s.token(t, "alice", time.Hour), "thread_id=alice-1"))
	other := dial(t, s.sidecar, "alice2", bearer(s.token(t, "alice", time.Hour), "thread_id=alice-1"))
	c.expectBound("alice-1")
	other.expectBound("alice-1")
	reply, err := a.nc.Request("conn."+c.CID+".close", []byte(`{"code":4403,"reason":"logged out"}`), waitTimeout)
	if err != nil || !strings.Contains(string(reply.Data), `"ok":true`) {
		t.Fatalf("close request: %v %s", err, replyData(reply))
	}
	c.expectError("closed_by_backend")
	if ce := c.expectClose(waitTimeout); ce.Code != statusClosedByBackend || ce.Reason != "logged out" {
		t.Errorf("close %d %q, want 4403 \"logged out\"", ce.Code, ce.Reason)
	}
	other.expectQuiet()
	// Once the sidecar has released the connection, nobody answers for it.
	deadline := time.Now().Add(waitTimeout)
	for {
		_, err := a.nc.Request("conn."+c.CID+".close", nil, time.Second)
		if errors.Is(err, nats.ErrNoResponders) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("close of a closed connection: %v, want no responders", err)
		}
	}
}

func replyData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

// A token that expires while its connection is open closes it with 4001;
// a resume with a fresh token and since loses nothing.
func TestTokenExpiryResume(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "none", "--jwt-leeway", "0s")
	a := newAgent(t, s.NATSURL)
	c := dial(t, s.sidecar, "short", bearer(s.token(t, "alice", 2*time.Second), "thread_id=alice-1"))
	c.expectBound("alice-1")

	// Every publish runs to its ack, so that what is stored is recorded.
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			if _, err := a.publish(context.Background(), "alice-1", a.event("alice-1", "agent_thinking", 0)); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			time.Sleep(20 * time.Millisecond) // a steady agent, not a flood
		}
	})
	cancel := func() { stop.Store(true) }
	defer func() { cancel(); wg.Wait() }()

	if err := c.waitFor(waitTimeout, func(_ []frame, err error) bool { return err != nil }); err != nil {
		t.Fatal(err)
	}
	frames, rerr := c.snapshot()
	var ce websocket.CloseError
	if !errors.As(rerr, &ce) || ce.Code != statusTokenExpired {
		t.Fatalf("connection ended with %v, want close 4001", rerr)
	}
	last := frames[len(frames)-1]
	if last.Type != typeError || !strings.Contains(string(last.Payload), codeTokenExpired) {
		t.Errorf("last frame before 4001: %s, want an error frame token_expired", last)
	}
	var got []uint64
	for _, f := range frames {
		if f.isEvent() {
			got = append(got, f.Seq)
		}
	}
	if len(got) == 0 {
		t.Fatal("no event before expiry")
	}
	since := got[len(got)-1]
	c2 := dial(t, s.sidecar, "fresh", bearer(s.token(t, "alice", time.Hour), fmt.Sprintf("thread_id=alice-1&since=%d", since)))
	b := c2.expectBound("alice-1")
	if !b.Recovered {
		t.Errorf("resume: recovered false")
	}
	// The agent goes on publishing while the resumed connection catches up.
	if err := c2.waitFor(waitTimeout, func(fs []frame, _ error) bool { return countEvents(fs) >= 10 }); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()
	want := a.expected("alice-1")
	if err := c2.waitFor(waitTimeout, func(fs []frame, _ error) bool { return len(got)+countEvents(fs) >= len(want) }); err != nil {
		t.Fatal(err)
	}
	frames2, _ := c2.snapshot()
	for _, f := range frames2 {
		if f.isEvent() {
			got = append(got, f.Seq)
		}
	}
	if err := checkRun(want, got, 0); err != nil {
		t.Errorf("events across the expiry and resume: %v", err)
	}
	t.Logf("%d events, %d before the 4001 close, none lost or repeated", len(got), len(got)-countEvents(frames2))
}

// The connection over --max-conns-per-user is refused with 4429; a user's
// slot is free again once one of its connections closed.
func TestMaxConnsPerUser(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "none", "--max-conns-per-user", "3")
	tok := s.token(t, "alice", time.Hour)
	var cs []*client
	for i := range 3 {
		cs = append(cs, dial(t, s.sidecar, fmt.Sprintf("alice%d", i), bearer(tok, "")))
	}
	p, ce := dialRefused(t, s.sidecar, bearer(tok, ""))
	if p.Code != codeConnectionLimit || ce.Code != statusConnectionLimit {
		t.Errorf("4th connection: error %q, close %d; want %q and 4429", p.Code, ce.Code, codeConnectionLimit)
	}
	dial(t, s.sidecar, "bob", bearer(s.token(t, "bob", time.Hour), "")).expectQuiet()
	cs[0].close()
	deadline := time.Now().Add(waitTimeout)
	for {
		c, err := tryDial(t, s.sidecar, "alice-again", bearer(tok, ""))
		if err == nil {
			c.expectQuiet()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection for alice after one of hers closed: %v", err)
		}
	}
}

// Handshakes without a valid token are refused after the upgrade with an
// error frame and 4401 (4001 when expired); a valid one works from the
// legacy browser subprotocols. No log line, at debug level, has a token.
func TestAuthHandshake(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "none", "--log-level", "debug", "--jwt-issuer", "legacy", "--jwt-leeway", "1s")
	good := signHS256(t, s.secret, jwt.MapClaims{"sub": "alice", "iss": "legacy", "exp": time.Now().Add(time.Hour).Unix()})
	tokens := map[string]string{"good": good}
	refusals := []struct {
		name   string
		opts   dialOptions
		code   string
		status websocket.StatusCode
	}{
		{"no token", dialOptions{}, codeUnauthorized, statusUnauthorized},
		{"bad signature", bearer(signHS256(t, []byte("another-secret-of-at-least-32-bytes"), jwt.MapClaims{"sub": "alice", "iss": "legacy", "exp": time.Now().Add(time.Hour).Unix()}), ""), codeUnauthorized, statusUnauthorized},
		{"alg none", bearer(noneToken(t, "alice"), ""), codeUnauthorized, statusUnauthorized},
		{"wrong issuer", bearer(signHS256(t, s.secret, jwt.MapClaims{"sub": "alice", "iss": "evil", "exp": time.Now().Add(time.Hour).Unix()}), ""), codeUnauthorized, statusUnauthorized},
		{"no exp", bearer(signHS256(t, s.secret, jwt.MapClaims{"sub": "alice", "iss": "legacy"}), ""), codeUnauthorized, statusUnauthorized},
		{"expired", bearer(signHS256(t, s.secret, jwt.MapClaims{"sub": "alice", "iss": "legacy", "exp": time.Now().Add(-time.Minute).Unix()}), ""), codeTokenExpired, statusTokenExpired},
		{"bad subprotocol base64", dialOptions{Subprotocols: []string{"jwt-auth", "jwt.%%%not-base64"}}, codeUnauthorized, statusUnauthorized},
		{"token in query, param off", dialOptions{Query: "token=" + good}, codeUnauthorized, statusUnauthorized},
	}
	for _, r := range refusals {
		if tok := r.opts.Header.Get("Authorization"); tok != "" {
			tokens[r.name] = strings.TrimPrefix(tok, "Bearer ")
		}
		p, ce := dialRefused(t, s.sidecar, r.opts)
		if p.Code != r.code || ce.Code != r.status {
			t.Errorf("%s: error %q (%s), close %d; want %q and %d", r.name, p.Code, p.Message, ce.Code, r.code, r.status)
		}
		for name, tok := range tokens {
			if strings.Contains(p.Message, tok) || strings.Contains(ce.Reason, tok) {
				t.Errorf("%s: refusal contains the %s token", r.name, name)
			}
		}
	}

	c := dial(t, s.sidecar, "browser", dialOptions{
		Query:        "thread_id=alice-1",
		Subprotocols: []string{"jwt-auth", "jwt." + base64.URLEncoding.EncodeToString([]byte(good))},
	})
	if got := c.ws.Subprotocol(); got != "jwt-auth" {
		t.Errorf("selected subprotocol %q, want jwt-auth", got)
	}
	c.expectBound("alice-1")
	c.send(`{"type":"user_message","payload":{"content":"hi"}}`)
	c.expectQuiet()

	s.stop(t)
	for _, line := range s.logs.grep("") {
		for name, tok := range tokens {
			if strings.Contains(line, tok) || strings.Contains(line, base64.RawURLEncoding.EncodeToString([]byte(tok))) {
				t.Errorf("log line contains the %s token: %s", name, line)
			}
		}
	}
	if n := len(s.logs.grep("connection refused")); n != len(refusals) {
		t.Errorf("%d refusals logged, want %d", n, len(refusals))
	}
}

func noneToken(t testing.TB, user string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": user, "iss": "legacy", "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// --authz http POSTs the hook request to a URL.
func TestAuthzHTTP(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	hook := newHTTPHook(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var req authzRequest
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		switch {
		case req.ThreadID == "alice-broken":
			http.Error(w, "backend down", http.StatusInternalServerError)
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(ownThreads(req))
		}
	})
	s := startAuthSidecar(t, "--authz", "http", "--authz-url", hook)
	tok := s.token(t, "alice", time.Hour)
	c := dial(t, s.sidecar, "alice", bearer(tok, "thread_id=alice-1"))
	c.expectBound("alice-1")
	c.send(`{"type":"switch_thread","payload":{"thread_id":"bob-1"}}`)
	c.expectError(codeThreadForbidden)
	c.send(`{"type":"switch_thread","payload":{"thread_id":"alice-broken"}}`)
	c.expectError(codeAuthzUnavailable)
	c.expectQuiet()
	if n := calls.Load(); n != 3 {
		t.Errorf("http hook called %d times, want 3", n)
	}
}

// serve refuses configurations that would leave threads open by accident.
func TestServeAuthRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"serve", "--data-dir", dir, "--nats-listen", "127.0.0.1:0"}
	cliFails(t, "", append(base, "--listen", "0.0.0.0:0"), "--insecure-no-auth")
	cliFails(t, "", append(base, "--listen", "127.0.0.1:0", "--auth", "jwt", "--jwt-secret-file", secret), "--authz")
	cliFails(t, "", append(base, "--listen", "127.0.0.1:0", "--auth", "jwt", "--authz", "none"), "key source")
	cliFails(t, "", append(base, "--listen", "127.0.0.1:0", "--auth", "jwt", "--jwt-secret-file", secret, "--authz", "http"), "--authz-url")
}

// A revocation that arrives while the hook is answering a bind of the
// revoked thread still ends that binding once it is made.
func TestAuthzRevokeDuringBind(t *testing.T) {
	t.Parallel()
	s := startAuthSidecar(t, "--authz", "nats")
	a := newAgent(t, s.NATSURL)
	asked := make(chan struct{}, 1)
	release := make(chan struct{})
	startAuthzResponder(t, a.nc, func(req authzRequest) any {
		if req.ThreadID == "alice-2" {
			asked <- struct{}{}
			<-release
		}
		return map[string]any{"allow": true}
	})
	c := dial(t, s.sidecar, "alice", bearer(s.token(t, "alice", time.Hour), "thread_id=alice-1"))
	c.expectBound("alice-1")
	c.send(`{"type":"switch_thread","payload":{"thread_id":"alice-2"}}`)
	select {
	case <-asked:
	case <-time.After(waitTimeout):
		t.Fatal("the hook was not asked for alice-2")
	}
	if err := a.nc.Publish("threadbus.authz.revoke", []byte(`{"user":"alice","thread_id":"alice-2"}`)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := waitUntil(ctx, func() bool { return len(s.logs.grep("authorization revoked", "connections=1")) == 1 }); err != nil {
		close(release)
		t.Fatalf("the sidecar did not take the revocation for the bind under way: %v", err)
	}
	close(release)
	c.expectBound("alice-2")
	c.expectError(codeThreadForbidden)
	a.mustPublish(t, "alice-2", 1)
	c.expectQuiet()
}
