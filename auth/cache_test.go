package auth_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/auth"
	"github.com/threadbus/threadbus/subjects"
)

// hook is an Authorizer for cache tests: it answers with decide, counts its
// calls, and when gate is set waits for it to close (or for ctx) first.
type hook struct {
	calls     atomic.Int64
	cancelled atomic.Int64 // calls that ended because ctx was done
	gate      chan struct{}
	decide    func(req auth.Request) (auth.Decision, error)
}

func (h *hook) Authorize(ctx context.Context, req auth.Request) (auth.Decision, error) {
	h.calls.Add(1)
	if h.gate != nil {
		select {
		case <-h.gate:
		case <-ctx.Done():
			h.cancelled.Add(1)
			return auth.Decision{}, fmt.Errorf("%w: %w", auth.ErrUnavailable, ctx.Err())
		}
	}
	return h.decide(req)
}

func allowAll(ttl time.Duration) func(auth.Request) (auth.Decision, error) {
	return func(auth.Request) (auth.Decision, error) { return auth.Decision{Allow: true, TTL: ttl}, nil }
}

// clock is a settable clock for WithClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func req(user, thread string) auth.Request {
	return auth.Request{User: user, ThreadID: thread, ConnectionID: "C", SidecarID: "S", Via: auth.ViaURL}
}

// ask authorizes (user, thread) and fails the test on an error or denial.
func ask(t *testing.T, c *auth.Cache, user, thread string) auth.Decision {
	t.Helper()
	d, err := c.Authorize(context.Background(), req(user, thread))
	if err != nil || !d.Allow {
		t.Fatalf("Authorize(%s, %s) = %+v, %v; want allowed", user, thread, d, err)
	}
	return d
}

func wantCalls(t *testing.T, h *hook, n int64) {
	t.Helper()
	if got := h.calls.Load(); got != n {
		t.Fatalf("%d hook calls; want %d", got, n)
	}
}

func TestCacheHitsAndExpiry(t *testing.T) {
	h := &hook{decide: allowAll(0)}
	clk := &clock{now: testNow}
	c := auth.NewCache(h, time.Minute, auth.WithClock(clk.Now))
	ask(t, c, "u1", "t1")
	ask(t, c, "u1", "t1")
	if d := ask(t, c, "u1", "t1"); d.TTL != time.Minute {
		t.Fatalf("cached decision TTL %v; want the minute left", d.TTL)
	}
	wantCalls(t, h, 1)
	ask(t, c, "u1", "t2") // another pair
	ask(t, c, "u2", "t1")
	wantCalls(t, h, 3)
	clk.Add(59 * time.Second)
	if d := ask(t, c, "u1", "t1"); d.TTL != time.Second {
		t.Fatalf("cached decision TTL %v; want the second left", d.TTL)
	}
	wantCalls(t, h, 3)
	clk.Add(time.Second)
	ask(t, c, "u1", "t1")
	wantCalls(t, h, 4)
	if s := c.Stats(); s.HookCalls != 4 || s.Hits != 3 || s.Misses != 4 || s.Entries != 3 {
		t.Fatalf("Stats = %+v; want 4 calls, 3 hits, 4 misses, 3 entries", s)
	}
}

func TestCacheReplyTTL(t *testing.T) {
	clk := &clock{now: testNow}
	ttl := map[string]time.Duration{"short": 5 * time.Second, "long": 10 * time.Minute, "never": -1}
	h := &hook{decide: func(r auth.Request) (auth.Decision, error) {
		return auth.Decision{Allow: true, TTL: ttl[r.ThreadID]}, nil
	}}
	c := auth.NewCache(h, time.Minute, auth.WithClock(clk.Now))
	for _, th := range []string{"short", "long", "never"} {
		ask(t, c, "u", th)
	}
	wantCalls(t, h, 3)
	ask(t, c, "u", "never")
	wantCalls(t, h, 4)
	clk.Add(6 * time.Second)
	ask(t, c, "u", "short")
	wantCalls(t, h, 5)
	clk.Add(5 * time.Minute) // past the default, within the reply's ttl
	ask(t, c, "u", "long")
	wantCalls(t, h, 5)
}

func TestCacheOff(t *testing.T) {
	h := &hook{decide: allowAll(time.Hour)}
	c := auth.NewCache(h, 0)
	for range 3 {
		ask(t, c, "u", "t")
	}
	wantCalls(t, h, 3)
	if s := c.Stats(); s.Entries != 0 || s.Hits != 0 {
		t.Fatalf("Stats = %+v; want nothing kept", s)
	}
}

func TestCacheKeepsNoDenialOrError(t *testing.T) {
	fail := true
	h := &hook{decide: func(r auth.Request) (auth.Decision, error) {
		if r.ThreadID == "denied" {
			return auth.Decision{Code: auth.CodeThreadForbidden}, nil
		}
		if fail {
			return auth.Decision{}, fmt.Errorf("%w: down", auth.ErrUnavailable)
		}
		return auth.Decision{Allow: true}, nil
	}}
	c := auth.NewCache(h, time.Minute)
	for range 2 {
		if d, err := c.Authorize(context.Background(), req("u", "denied")); err != nil || d.Allow || d.Code != auth.CodeThreadForbidden {
			t.Fatalf("Authorize(denied) = %+v, %v; want thread_forbidden", d, err)
		}
		if _, err := c.Authorize(context.Background(), req("u", "down")); !errors.Is(err, auth.ErrUnavailable) {
			t.Fatalf("Authorize(down): %v; want ErrUnavailable", err)
		}
	}
	wantCalls(t, h, 4)
	fail = false
	ask(t, c, "u", "down")
	ask(t, c, "u", "down")
	wantCalls(t, h, 5)
}

func TestCacheRevoke(t *testing.T) {
	pairs := [][2]string{{"u1", "t1"}, {"u1", "t2"}, {"u2", "t1"}, {"u2", "t2"}}
	tests := []struct {
		user, thread string
		dropped      map[[2]string]bool
	}{
		{"u1", "t1", map[[2]string]bool{{"u1", "t1"}: true}},
		{"u1", "", map[[2]string]bool{{"u1", "t1"}: true, {"u1", "t2"}: true}},
		{"", "t1", map[[2]string]bool{{"u1", "t1"}: true, {"u2", "t1"}: true}},
		{"", "", map[[2]string]bool{{"u1", "t1"}: true, {"u1", "t2"}: true, {"u2", "t1"}: true, {"u2", "t2"}: true}},
		{"u3", "", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("user %q thread %q", tt.user, tt.thread), func(t *testing.T) {
			h := &hook{decide: allowAll(0)}
			c := auth.NewCache(h, time.Hour)
			for _, p := range pairs {
				ask(t, c, p[0], p[1])
			}
			c.Revoke(tt.user, tt.thread)
			for _, p := range pairs {
				before := h.calls.Load()
				ask(t, c, p[0], p[1])
				if asked := h.calls.Load() > before; asked != tt.dropped[p] {
					t.Errorf("%v: hook asked again %v; want %v", p, asked, tt.dropped[p])
				}
			}
		})
	}
}

// TestCacheRevokeInFlight: a call under way when its pair is revoked
// answers its callers but is not kept.
func TestCacheRevokeInFlight(t *testing.T) {
	h := &hook{decide: allowAll(0), gate: make(chan struct{})}
	c := auth.NewCache(h, time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ask(t, c, "u", "t")
	}()
	waitFor(t, "the hook call", func() bool { return h.calls.Load() == 1 })
	c.Revoke("u", "")
	close(h.gate)
	<-done
	ask(t, c, "u", "t")
	wantCalls(t, h, 2)
	ask(t, c, "u", "t")
	wantCalls(t, h, 2)
}

// TestCacheSharedCall: concurrent requests for a pair make one hook call.
func TestCacheSharedCall(t *testing.T) {
	h := &hook{decide: allowAll(0), gate: make(chan struct{})}
	c := auth.NewCache(h, time.Hour)
	const n = 50
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ask(t, c, "u", "t")
		}()
	}
	waitFor(t, "every request to join", func() bool { return c.Stats().Misses == n })
	close(h.gate)
	wg.Wait()
	wantCalls(t, h, 1)
}

// TestCacheSharedCallCancel: a request that gives up does not fail the
// others sharing its call, whether it made the call or joined it; when all
// give up, the call is cancelled and the next request makes a new one.
func TestCacheSharedCallCancel(t *testing.T) {
	h := &hook{decide: allowAll(0), gate: make(chan struct{})}
	c := auth.NewCache(h, time.Hour)
	first, cancelFirst := context.WithCancel(context.Background())
	joined, cancelJoined := context.WithCancel(context.Background())
	results := make(chan error, 3)
	askWith := func(ctx context.Context) {
		d, err := c.Authorize(ctx, req("u", "t"))
		if err == nil && !d.Allow {
			err = errors.New("denied")
		}
		results <- err
	}
	go askWith(first) // makes the call
	waitFor(t, "the hook call", func() bool { return h.calls.Load() == 1 })
	go askWith(joined)
	go askWith(context.Background())
	waitFor(t, "two requests to join", func() bool { return c.Stats().Misses == 3 })
	cancelFirst()
	cancelJoined()
	if err := <-results; !errors.Is(err, context.Canceled) {
		t.Fatalf("the joined request that gave up: %v; want context.Canceled", err)
	}
	close(h.gate)
	for range 2 {
		if err := <-results; err != nil {
			t.Fatalf("a request sharing the call: %v; want allowed", err)
		}
	}
	wantCalls(t, h, 1)
	if n := h.cancelled.Load(); n != 0 {
		t.Fatalf("the call was cancelled though a request still waited")
	}

	// Everybody gives up: the call is cancelled.
	h2 := &hook{decide: allowAll(0), gate: make(chan struct{})}
	c2 := auth.NewCache(h2, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, err := c2.Authorize(ctx, req("u", "t"))
		results <- err
	}()
	waitFor(t, "the hook call", func() bool { return h2.calls.Load() == 1 })
	cancel()
	if err := <-results; !errors.Is(err, auth.ErrUnavailable) {
		t.Fatalf("the only request gave up: %v; want ErrUnavailable", err)
	}
	if h2.cancelled.Load() != 1 {
		t.Fatal("the call was not cancelled when nobody waited for it")
	}
	close(h2.gate)
	ask(t, c2, "u", "t")
	wantCalls(t, h2, 2)
}

// TestCacheBound: when full, the pair stored longest ago goes first.
func TestCacheBound(t *testing.T) {
	h := &hook{decide: allowAll(0)}
	c := auth.NewCache(h, time.Hour, auth.WithMaxEntries(3))
	for _, th := range []string{"a", "b", "c"} {
		ask(t, c, "u", th)
	}
	ask(t, c, "u", "d") // drops a
	if s := c.Stats(); s.Entries != 3 {
		t.Fatalf("%d entries; want 3", s.Entries)
	}
	for _, th := range []string{"b", "c", "d"} {
		ask(t, c, "u", th)
	}
	wantCalls(t, h, 4)
	ask(t, c, "u", "a")
	wantCalls(t, h, 5)
}

// TestCacheOverNATS: the cache in front of the NATS hook, a responder
// counting what it is asked.
func TestCacheOverNATS(t *testing.T) {
	ns, nc := startNATS(t)
	backend := connect(t, ns.ClientURL())
	var asked atomic.Int64
	if _, err := backend.QueueSubscribe(subjects.AuthzBind, "backend", func(m *nats.Msg) {
		asked.Add(1)
		_ = m.Respond([]byte(`{"allow":true,"ttl_s":60}`))
	}); err != nil {
		t.Fatal(err)
	}
	if err := backend.Flush(); err != nil {
		t.Fatal(err)
	}
	c := auth.NewCache(auth.NewNATSAuthorizer(nc, time.Second), time.Minute)
	for range 5 {
		if d := ask(t, c, "u-42", "thread_ab12"); d.TTL <= 0 || d.TTL > time.Minute {
			t.Fatalf("TTL %v", d.TTL)
		}
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("the backend was asked %d times; want 1", n)
	}
}

// TestCacheHookPanics: a panic in the wrapped Authorizer reaches the
// request that made the call; those sharing it get an error, not a hang.
func TestCacheHookPanics(t *testing.T) {
	gate := make(chan struct{})
	c := auth.NewCache(auth.AuthorizerFunc(func(context.Context, auth.Request) (auth.Decision, error) {
		<-gate
		panic("hook bug")
	}), time.Hour)
	joined := make(chan error, 1)
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = c.Authorize(context.Background(), req("u", "t"))
	}()
	waitFor(t, "the call", func() bool { return c.Stats().HookCalls == 1 })
	go func() {
		_, err := c.Authorize(context.Background(), req("u", "t"))
		joined <- err
	}()
	waitFor(t, "a request to join", func() bool { return c.Stats().Misses == 2 })
	close(gate)
	if p := <-panicked; p != "hook bug" {
		t.Fatalf("recovered %v; want the hook's panic", p)
	}
	if err := <-joined; !errors.Is(err, auth.ErrUnavailable) {
		t.Fatalf("the joined request: %v; want ErrUnavailable", err)
	}
}
