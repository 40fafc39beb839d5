package bus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
)

// testRegistryTTL is the registry TTL of these tests: short, so that expiry
// and refresh happen within a test, and a whole number of seconds because
// the server counts message TTLs in seconds.
const testRegistryTTL = 2 * time.Second

// expirySlack is how late the server may remove an expired entry: it checks
// TTLs on a timer, and -race on a loaded machine delays that timer and the
// watcher that reports the removal.
const expirySlack = 3 * time.Second

// registryEnv is an embedded server, a Bus with a short registry TTL, and an
// agent connection that reads the registry the way the CLI or an agent does.
type registryEnv struct {
	url string // the server's client URL
	bus *bus.Bus
	js  jetstream.JetStream // the agent's
}

func newRegistryEnv(t *testing.T) *registryEnv {
	t.Helper()
	ns := startServer(t)
	e := &registryEnv{url: ns.ClientURL()}
	e.bus = openBusTTL(t, e.url, testRegistryTTL)
	_, e.js = connectAgent(t, e.url)
	return e
}

// openBusTTL is openBus with a registry TTL.
func openBusTTL(t *testing.T, url string, ttl time.Duration) *bus.Bus {
	t.Helper()
	b, err := bus.Open(testCtx(t), bus.Config{URL: url, RegistryTTL: ttl, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

func newBinding(tid, cid string) bus.Binding {
	return bus.Binding{
		ConnectionID: cid,
		ThreadID:     tid,
		SidecarID:    "sc-test",
		User:         "user-" + cid,
		RemoteAddr:   "127.0.0.1:50000",
		BoundAt:      time.Now().UTC(),
		ReplayFrom:   "after seq 0",
	}
}

// sameBinding compares two bindings, BoundAt by instant (a JSON round trip
// keeps the instant, not the representation).
func sameBinding(a, b bus.Binding) bool {
	if !a.BoundAt.Equal(b.BoundAt) {
		return false
	}
	a.BoundAt, b.BoundAt = time.Time{}, time.Time{}
	return a == b
}

func keysOf(bs []bus.Binding) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.ThreadID + "." + b.ConnectionID
	}
	return out
}

func listBindings(t *testing.T, js jetstream.JetStream, tid string) []bus.Binding {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
	defer cancel()
	bs, err := bus.ListBindings(ctx, js, tid)
	if err != nil {
		t.Fatalf("ListBindings(%q): %v", tid, err)
	}
	return bs
}

// waitListed polls ListBindings(tid) until cond holds for its result, and
// returns that result. Registry writes are asynchronous, so what a Bus put
// shows up a little later.
func waitListed(t *testing.T, js jetstream.JetStream, tid, what string, cond func([]bus.Binding) bool) []bus.Binding {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		bs := listBindings(t, js, tid)
		if cond(bs) {
			return bs
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; listed %v", waitTimeout, what, keysOf(bs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasKeys(want ...string) func([]bus.Binding) bool {
	return func(bs []bus.Binding) bool { return strings.Join(keysOf(bs), " ") == strings.Join(want, " ") }
}

// watch runs WatchBindings in a goroutine and hands its changes over a
// channel. The watch ends when the test does.
type watch struct {
	name    string
	changes chan bus.BindingChange
	done    chan struct{}
	err     error // WatchBindings' result; read after done is closed
}

func startWatch(t *testing.T, js jetstream.JetStream, tid string) *watch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watch{name: fmt.Sprintf("watch(%q)", tid), changes: make(chan bus.BindingChange, 1024), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.err = bus.WatchBindings(ctx, js, tid, func(c bus.BindingChange) bool {
			select {
			case w.changes <- c:
				return true
			case <-ctx.Done():
				return false
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-w.done
		if w.err != nil {
			t.Errorf("%s: %v", w.name, w.err)
		}
	})
	return w
}

// next returns the next change, failing the test if none comes in time.
func (w *watch) next(t *testing.T, timeout time.Duration) bus.BindingChange {
	t.Helper()
	select {
	case c := <-w.changes:
		return c
	case <-w.done:
		t.Fatalf("%s ended (%v) while a change was expected", w.name, w.err)
	case <-time.After(timeout):
		t.Fatalf("%s: no change within %v", w.name, timeout)
	}
	panic("unreachable")
}

// expect reads the next change and fails unless it is op on tid/cid (and,
// for a switch, from the thread from).
func (w *watch) expect(t *testing.T, op bus.BindingOp, tid, cid, from string) bus.BindingChange {
	t.Helper()
	c := w.next(t, waitTimeout)
	if c.Op != op || c.Binding.ThreadID != tid || c.Binding.ConnectionID != cid || c.From != from {
		t.Fatalf("%s: got %s, want %s", w.name, describe(c), describe(bus.BindingChange{
			Op: op, From: from, Binding: bus.Binding{ThreadID: tid, ConnectionID: cid},
		}))
	}
	return c
}

func describe(c bus.BindingChange) string {
	s := fmt.Sprintf("%s %s.%s", c.Op, c.Binding.ThreadID, c.Binding.ConnectionID)
	if c.From != "" {
		s += " from " + c.From
	}
	return s
}

// TestRegistryPutListDelete: a put shows up in ListBindings with every
// field, sorted by thread then bind time; the thread filter keeps one
// thread; a delete removes the entry.
func TestRegistryPutListDelete(t *testing.T) {
	e := newRegistryEnv(t)
	if bs := listBindings(t, e.js, ""); len(bs) != 0 {
		t.Fatalf("a fresh registry lists %v", keysOf(bs))
	}

	now := time.Now().UTC()
	b1 := newBinding("thread_a", "conn1")
	b1.BoundAt = now.Add(time.Second) // bound after conn2: listed after it
	b2 := newBinding("thread_a", "conn2")
	b2.BoundAt = now
	b2.User = "" // omitted when unknown
	b3 := newBinding("thread_b", "conn3")
	for _, b := range []bus.Binding{b1, b2, b3} {
		e.bus.PutBinding(b)
	}

	all := waitListed(t, e.js, "", "three bindings", func(bs []bus.Binding) bool { return len(bs) == 3 })
	want := []bus.Binding{b2, b1, b3}
	for i := range want {
		if !sameBinding(all[i], want[i]) {
			t.Errorf("ListBindings()[%d] = %+v, want %+v", i, all[i], want[i])
		}
	}

	if got := keysOf(listBindings(t, e.js, "thread_a")); strings.Join(got, " ") != "thread_a.conn2 thread_a.conn1" {
		t.Errorf("ListBindings(thread_a) = %v, want [thread_a.conn2 thread_a.conn1]", got)
	}
	if got := keysOf(listBindings(t, e.js, "thread_b")); strings.Join(got, " ") != "thread_b.conn3" {
		t.Errorf("ListBindings(thread_b) = %v, want [thread_b.conn3]", got)
	}
	if got := listBindings(t, e.js, "thread_none"); len(got) != 0 {
		t.Errorf("ListBindings(thread_none) = %v, want none", keysOf(got))
	}
	// A thread id that is a prefix of another selects only its own keys.
	e.bus.PutBinding(newBinding("thread_a2", "conn4"))
	waitListed(t, e.js, "thread_a2", "thread_a2.conn4", hasKeys("thread_a2.conn4"))
	if got := keysOf(listBindings(t, e.js, "thread_a")); len(got) != 2 {
		t.Errorf("ListBindings(thread_a) = %v after a put on thread_a2, want thread_a's two", got)
	}

	e.bus.DeleteBinding("thread_a", "conn1")
	waitListed(t, e.js, "thread_a", "thread_a.conn1 to go", hasKeys("thread_a.conn2"))
	e.bus.DeleteBinding("thread_a", "conn2")
	e.bus.DeleteBinding("thread_a2", "conn4")
	waitListed(t, e.js, "", "only thread_b.conn3 left", hasKeys("thread_b.conn3"))

	// Deleting what is not there changes nothing.
	e.bus.DeleteBinding("thread_a", "conn1")
	e.bus.DeleteBinding("thread_x", "conn9")
	e.bus.PutBinding(newBinding("thread_c", "conn5")) // a barrier: writes are done in order
	waitListed(t, e.js, "", "thread_c.conn5", hasKeys("thread_b.conn3", "thread_c.conn5"))

	for _, bad := range []string{"a.b", "*", ">", "a b", strings.Repeat("x", subjects.MaxIDLen+1)} {
		if _, err := bus.ListBindings(testCtx(t), e.js, bad); !errors.Is(err, subjects.ErrInvalidThreadID) {
			t.Errorf("ListBindings(%q) = %v, want an error wrapping ErrInvalidThreadID", bad, err)
		}
	}
}

// TestRegistryWatchOps: WatchBindings reports the entries present when it
// starts as binds, then one change per bind, switch and unbind: a switch
// (the new entry put, then the old one deleted) is one OpSwitch, not an
// unbind and a bind; refreshes are not reported.
func TestRegistryWatchOps(t *testing.T) {
	e := newRegistryEnv(t)
	e.bus.PutBinding(newBinding("thread_init", "conn0"))
	e.bus.PutBinding(newBinding("thread_init", "conn00"))
	waitListed(t, e.js, "", "the initial bindings", hasKeys("thread_init.conn0", "thread_init.conn00"))

	w := startWatch(t, e.js, "")
	wa := startWatch(t, e.js, "thread_a") // one thread only
	// Initial entries, in key order.
	w.expect(t, bus.OpBind, "thread_init", "conn0", "")
	w.expect(t, bus.OpBind, "thread_init", "conn00", "")

	e.bus.PutBinding(newBinding("thread_a", "conn1"))
	c := w.expect(t, bus.OpBind, "thread_a", "conn1", "")
	if c.Time.IsZero() || c.Binding.SidecarID != "sc-test" || c.Binding.User != "user-conn1" {
		t.Errorf("bind change %+v lacks its time or the binding's fields", c)
	}
	wa.expect(t, bus.OpBind, "thread_a", "conn1", "")

	// Switch thread_a -> thread_b, the way the sidecar writes it.
	e.bus.PutBinding(newBinding("thread_b", "conn1"))
	e.bus.DeleteBinding("thread_a", "conn1")
	w.expect(t, bus.OpSwitch, "thread_b", "conn1", "thread_a")
	// Seen from thread_a alone, the connection left.
	wa.expect(t, bus.OpUnbind, "thread_a", "conn1", "")

	// And back, then away again: each switch is one change.
	e.bus.PutBinding(newBinding("thread_a", "conn1"))
	e.bus.DeleteBinding("thread_b", "conn1")
	w.expect(t, bus.OpSwitch, "thread_a", "conn1", "thread_b")
	wa.expect(t, bus.OpBind, "thread_a", "conn1", "")

	// Close: the entry is deleted.
	e.bus.DeleteBinding("thread_a", "conn1")
	w.expect(t, bus.OpUnbind, "thread_a", "conn1", "")
	wa.expect(t, bus.OpUnbind, "thread_a", "conn1", "")
	e.bus.DeleteBinding("thread_init", "conn0")
	w.expect(t, bus.OpUnbind, "thread_init", "conn0", "")

	// Nothing else was reported in between, nor since (refreshes of
	// thread_init.conn00 happened meanwhile): a sentinel bind is next.
	e.bus.PutBinding(newBinding("thread_a", "sentinel"))
	w.expect(t, bus.OpBind, "thread_a", "sentinel", "")
	wa.expect(t, bus.OpBind, "thread_a", "sentinel", "")

	// fn returning false ends the watch.
	stopped := make(chan error, 1)
	go func() {
		stopped <- bus.WatchBindings(testCtx(t), e.js, "", func(bus.BindingChange) bool { return false })
	}()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("WatchBindings ended by fn: %v, want nil", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("WatchBindings did not return after fn returned false")
	}

	for _, bad := range []string{"a.b", "*", ">", " "} {
		err := bus.WatchBindings(testCtx(t), e.js, bad, func(bus.BindingChange) bool { return true })
		if !errors.Is(err, subjects.ErrInvalidThreadID) {
			t.Errorf("WatchBindings(%q) = %v, want an error wrapping ErrInvalidThreadID", bad, err)
		}
	}
}

// TestRegistryRefresh: the entries of a live Bus outlive their TTL many
// times over, because it rewrites them every TTL/3; a watcher sees no
// change meanwhile.
func TestRegistryRefresh(t *testing.T) {
	e := newRegistryEnv(t)
	e.bus.PutBinding(newBinding("thread_r", "conn1"))
	waitListed(t, e.js, "thread_r", "the binding", hasKeys("thread_r.conn1"))
	w := startWatch(t, e.js, "thread_r")
	w.expect(t, bus.OpBind, "thread_r", "conn1", "")

	kv, err := e.js.KeyValue(testCtx(t), bus.BindingsBucket)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(testCtx(t), "thread_r.conn1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	firstRev := entry.Revision()

	start := time.Now()
	for time.Since(start) < 3*testRegistryTTL {
		if bs := listBindings(t, e.js, "thread_r"); len(bs) != 1 {
			t.Fatalf("after %v ListBindings(thread_r) = %v: the entry of a live Bus was lost",
				time.Since(start).Round(time.Millisecond), keysOf(bs))
		}
		select {
		case c := <-w.changes:
			t.Fatalf("watch reported %s while the Bus kept the binding", describe(c))
		case <-time.After(50 * time.Millisecond):
		}
	}
	entry, err = kv.Get(testCtx(t), "thread_r.conn1")
	if err != nil {
		t.Fatalf("Get after %v: %v", 3*testRegistryTTL, err)
	}
	// Refreshed every TTL/3 for 3 TTLs: about 9 writes; count a few.
	if refreshes := entry.Revision() - firstRev; refreshes < 3 {
		t.Errorf("the entry was rewritten %d times in %v, want about 9 (every TTL/3)", refreshes, 3*testRegistryTTL)
	}
}

// TestRegistryExpiry: the entries of a sidecar that died (its NATS
// connection gone, nothing deleted) expire within the TTL, and watchers see
// an OpExpire for each; the entries of a live Bus on the same thread stay.
func TestRegistryExpiry(t *testing.T) {
	e := newRegistryEnv(t)
	w := startWatch(t, e.js, "")
	wt := startWatch(t, e.js, "thread_d")

	dead := openBusTTL(t, e.url, testRegistryTTL) // its own NATS connection
	dead.PutBinding(newBinding("thread_d", "conn_dead"))
	e.bus.PutBinding(newBinding("thread_d", "conn_live"))
	for _, ww := range []*watch{w, wt} {
		seen := map[string]bool{}
		for range 2 {
			c := ww.next(t, waitTimeout)
			if c.Op != bus.OpBind {
				t.Fatalf("%s: %s, want binds", ww.name, describe(c))
			}
			seen[c.Binding.ConnectionID] = true
		}
		if !seen["conn_dead"] || !seen["conn_live"] {
			t.Fatalf("%s: binds of %v, want conn_dead and conn_live", ww.name, seen)
		}
	}

	// The sidecar dies: its connection drops without a word.
	killed := time.Now()
	dead.Conn().Close()

	// Its last write was at most TTL/3 ago, so it expires within a TTL.
	for _, ww := range []*watch{w, wt} {
		c := ww.next(t, testRegistryTTL+expirySlack)
		if c.Op != bus.OpExpire || c.Binding.ThreadID != "thread_d" || c.Binding.ConnectionID != "conn_dead" {
			t.Fatalf("%s: after the sidecar died got %s, want expire thread_d.conn_dead", ww.name, describe(c))
		}
		t.Logf("%s: expire seen %v after the connection closed (TTL %v)", ww.name, time.Since(killed).Round(time.Millisecond), testRegistryTTL)
		if c.Time.Before(killed) {
			t.Errorf("%s: the expiry marker was stored at %v, before the sidecar died (%v)", ww.name, c.Time, killed)
		}
	}
	if bs := listBindings(t, e.js, "thread_d"); strings.Join(keysOf(bs), " ") != "thread_d.conn_live" {
		t.Errorf("after expiry ListBindings(thread_d) = %v, want only thread_d.conn_live", keysOf(bs))
	}

	// Close on the dead Bus is fine and quick.
	ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
	defer cancel()
	if err := dead.Close(ctx); err != nil {
		t.Errorf("Close after the connection was closed: %v", err)
	}

	// Nothing more: the live binding was not touched. A sentinel comes next.
	e.bus.PutBinding(newBinding("thread_d", "sentinel"))
	w.expect(t, bus.OpBind, "thread_d", "sentinel", "")
	wt.expect(t, bus.OpBind, "thread_d", "sentinel", "")
}

// TestWaitBound: WaitBound returns at once when the thread has a binding,
// waits for one otherwise, and gives up with the context's error.
func TestWaitBound(t *testing.T) {
	e := newRegistryEnv(t)

	t.Run("bound already", func(t *testing.T) {
		want := newBinding("thread_w1", "conn1")
		e.bus.PutBinding(want)
		waitListed(t, e.js, "thread_w1", "the binding", hasKeys("thread_w1.conn1"))
		ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
		defer cancel()
		got, err := bus.WaitBound(ctx, e.js, "thread_w1")
		if err != nil || !sameBinding(got, want) {
			t.Fatalf("WaitBound(thread_w1) = %+v, %v; want %+v", got, err, want)
		}
	})

	t.Run("waits", func(t *testing.T) {
		e.bus.PutBinding(newBinding("thread_other", "conn2")) // not the one waited for
		waitListed(t, e.js, "thread_other", "the other thread's binding", hasKeys("thread_other.conn2"))

		ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
		defer cancel()
		type result struct {
			b   bus.Binding
			err error
		}
		res := make(chan result, 1)
		go func() {
			b, err := bus.WaitBound(ctx, e.js, "thread_w2")
			res <- result{b, err}
		}()
		// WaitBound watches with a consumer on the bucket's stream: once it
		// exists, the wait has started, and a binding put now is news to it.
		waitWatchers(t, e.js, 1)
		select {
		case r := <-res:
			t.Fatalf("WaitBound(thread_w2) returned %+v, %v before the thread was bound", r.b, r.err)
		default:
		}
		e.bus.PutBinding(newBinding("thread_other", "conn3"))
		want := newBinding("thread_w2", "conn4")
		e.bus.PutBinding(want)
		select {
		case r := <-res:
			if r.err != nil || !sameBinding(r.b, want) {
				t.Fatalf("WaitBound(thread_w2) = %+v, %v; want %+v", r.b, r.err, want)
			}
		case <-time.After(waitTimeout):
			t.Fatal("WaitBound(thread_w2) still waiting after the thread was bound")
		}
	})

	t.Run("switch counts", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
		defer cancel()
		res := make(chan error, 1)
		go func() {
			_, err := bus.WaitBound(ctx, e.js, "thread_w3")
			res <- err
		}()
		waitWatchers(t, e.js, 1)
		// conn2 moves from thread_other to thread_w3.
		e.bus.PutBinding(newBinding("thread_w3", "conn2"))
		e.bus.DeleteBinding("thread_other", "conn2")
		select {
		case err := <-res:
			if err != nil {
				t.Fatalf("WaitBound(thread_w3) after a switch to it: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("WaitBound(thread_w3) still waiting after a connection switched to it")
		}
	})

	t.Run("deadline", func(t *testing.T) {
		const wait = 300 * time.Millisecond
		ctx, cancel := context.WithTimeout(testCtx(t), wait)
		defer cancel()
		start := time.Now()
		b, err := bus.WaitBound(ctx, e.js, "thread_never")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitBound(thread_never) = %+v, %v; want an error wrapping context.DeadlineExceeded", b, err)
		}
		if took := time.Since(start); took < wait {
			t.Errorf("WaitBound gave up after %v, before its deadline %v", took, wait)
		}
		if !strings.Contains(err.Error(), "thread_never") {
			t.Errorf("error %q does not name the thread", err)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testCtx(t))
		cancel()
		if _, err := bus.WaitBound(ctx, e.js, "thread_never"); !errors.Is(err, context.Canceled) {
			t.Fatalf("WaitBound with a cancelled context = %v, want an error wrapping context.Canceled", err)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		for _, bad := range []string{"a.b", "*", ">", "a b", "thread.*", strings.Repeat("x", subjects.MaxIDLen+1)} {
			ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
			_, err := bus.WaitBound(ctx, e.js, bad)
			cancel()
			if !errors.Is(err, subjects.ErrInvalidThreadID) {
				t.Errorf("WaitBound(%q) = %v, want an error wrapping ErrInvalidThreadID", bad, err)
			}
		}
	})

	t.Run("empty id", func(t *testing.T) {
		// "" is not a thread: it must not mean "any thread", which would
		// return at once here because other threads are bound.
		ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
		defer cancel()
		b, err := bus.WaitBound(ctx, e.js, "")
		if !errors.Is(err, subjects.ErrInvalidThreadID) {
			t.Errorf("WaitBound(\"\") = %+v, %v; want an error wrapping ErrInvalidThreadID", b, err)
		}
	})
}

// waitWatchers waits until the bindings bucket's stream has n consumers:
// each registry watch (WaitBound, WatchBindings, ListBindings) is one.
func waitWatchers(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	s, err := js.Stream(testCtx(t), "KV_"+bus.BindingsBucket)
	if err != nil {
		t.Fatal(err)
	}
	var got int
	waitFor(t, fmt.Sprintf("%d watcher(s) on the bindings bucket", n), func() bool {
		info, err := s.Info(testCtx(t))
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		got = info.State.Consumers
		return got >= n
	})
	if got != n {
		t.Fatalf("the bindings bucket has %d consumers, want %d", got, n)
	}
}

// TestNoRegistry: against a NATS server no Bus ever used, the readers say
// there is no registry instead of an empty answer.
func TestNoRegistry(t *testing.T) {
	ns := startServer(t)
	_, js := connectAgent(t, ns.ClientURL())
	ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
	defer cancel()

	if bs, err := bus.ListBindings(ctx, js, ""); !errors.Is(err, bus.ErrNoRegistry) {
		t.Errorf("ListBindings = %v, %v; want an error wrapping ErrNoRegistry", bs, err)
	}
	if _, err := bus.ListBindings(ctx, js, "thread_a"); !errors.Is(err, bus.ErrNoRegistry) {
		t.Errorf("ListBindings(thread_a) = %v; want an error wrapping ErrNoRegistry", err)
	}
	called := false
	err := bus.WatchBindings(ctx, js, "", func(bus.BindingChange) bool { called = true; return true })
	if !errors.Is(err, bus.ErrNoRegistry) || called {
		t.Errorf("WatchBindings = %v (fn called: %v); want an error wrapping ErrNoRegistry", err, called)
	}
	if _, err := bus.WaitBound(ctx, js, "thread_a"); !errors.Is(err, bus.ErrNoRegistry) {
		t.Errorf("WaitBound = %v; want an error wrapping ErrNoRegistry", err)
	}
	if ctx.Err() != nil {
		t.Errorf("the readers waited for the context instead of failing: %v", ctx.Err())
	}
}

// TestWatchBindingsConnectionClosed: when the reader's NATS connection
// closes, WatchBindings and WaitBound return an error instead of waiting
// (or spinning) until their context ends.
func TestWatchBindingsConnectionClosed(t *testing.T) {
	e := newRegistryEnv(t)
	nc, err := nats.Connect(e.url, nats.Name("test-reader"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(testCtx(t), waitTimeout)
	defer cancel()
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- bus.WatchBindings(ctx, js, "", func(bus.BindingChange) bool { return true })
	}()
	waitErr := make(chan error, 1)
	go func() {
		_, err := bus.WaitBound(ctx, js, "thread_c")
		waitErr <- err
	}()
	waitWatchers(t, e.js, 2)
	nc.Close()
	for name, ch := range map[string]chan error{"WatchBindings": watchErr, "WaitBound": waitErr} {
		select {
		case err := <-ch:
			if err == nil {
				t.Errorf("%s returned nil after its connection closed, want an error", name)
			} else {
				t.Logf("%s: %v", name, err)
			}
		case <-ctx.Done():
			t.Errorf("%s did not return within %v of its connection closing", name, waitTimeout)
			<-ch
		}
	}
}

// benchBus opens a Bus on a fresh embedded server for a benchmark; both are
// closed when it ends.
func benchBus(b *testing.B) *bus.Bus {
	b.Helper()
	ns, err := bus.StartServer(bus.ServerConfig{Listen: "127.0.0.1:0", StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	bb, err := bus.Open(b.Context(), bus.Config{URL: ns.ClientURL(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := bb.Close(ctx); err != nil {
			b.Errorf("Close: %v", err)
		}
	})
	return bb
}

// benchBindings are the bindings of 1,000 connections, which the
// benchmarks cycle through.
func benchBindings() []bus.Binding {
	bs := make([]bus.Binding, 1000)
	for i := range bs {
		bs[i] = newBinding(fmt.Sprintf("thread_%d", i%100), fmt.Sprintf("conn_%d", i))
	}
	return bs
}

// BenchmarkPutBinding is what the registry adds to a bind: keeping the
// entry and queueing its write. Encoding and writing it happen on the registry's
// goroutine, off the bind path.
func BenchmarkPutBinding(b *testing.B) {
	bb := benchBus(b)
	bs := benchBindings()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		bb.PutBinding(bs[i%len(bs)])
		i++
	}
}

// BenchmarkBind is the Bus side of a bind (joining the thread's live feed,
// then leaving it) without the registry and with its put and delete: the
// ratio is what the registry costs a bind.
func BenchmarkBind(b *testing.B) {
	for _, registry := range []bool{false, true} {
		b.Run(fmt.Sprintf("registry=%v", registry), func(b *testing.B) {
			bb := benchBus(b)
			bs := benchBindings()
			var l recorder
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				bd := bs[i%len(bs)]
				i++
				if _, err := bb.Join(b.Context(), bd.ThreadID, &l); err != nil {
					b.Fatal(err)
				}
				if registry {
					bb.PutBinding(bd)
				}
				bb.Leave(bd.ThreadID, &l)
				if registry {
					bb.DeleteBinding(bd.ThreadID, bd.ConnectionID)
				}
			}
		})
	}
}
