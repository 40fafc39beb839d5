package auth

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCacheEntries bounds a Cache when WithMaxEntries is not given: about
// 10 MiB of (user, thread) pairs at worst.
const DefaultCacheEntries = 65536

// Cache is an Authorizer that keeps allowed (user, thread) pairs for the
// decision's TTL, so a reconnect storm asks the hook once per pair. Denials
// and errors are never kept. Concurrent requests for a pair that is not
// kept share one call of the wrapped Authorizer: the first request's
// connection id, via and claims are the ones the hook sees. It is safe for
// concurrent use and starts no goroutine.
type Cache struct {
	next Authorizer
	ttl  time.Duration
	max  int
	now  func() time.Time

	mu      sync.Mutex
	entries map[pair]*list.Element // of *cacheEntry
	order   *list.List             // oldest stored first
	calls   map[pair]*authzCall

	hits, misses, hookCalls atomic.Uint64
}

var _ Authorizer = (*Cache)(nil)

type pair struct{ user, thread string }

type cacheEntry struct {
	key     pair
	expires time.Time
}

// authzCall is one call of the wrapped Authorizer, shared by the requests
// for its pair that arrive while it runs.
type authzCall struct {
	key     pair
	done    chan struct{}
	dec     Decision
	err     error
	waiters int                // requests still waiting, the caller's included
	cancel  context.CancelFunc // ends the call when every waiter has gone
	revoked bool               // a Revoke matched while it ran: not stored
}

// CacheOption configures a Cache.
type CacheOption func(*Cache)

// WithClock sets the clock entries expire by. By default, time.Now.
func WithClock(now func() time.Time) CacheOption { return func(c *Cache) { c.now = now } }

// WithMaxEntries bounds the pairs kept; when full, the pair stored longest
// ago goes first. By default, DefaultCacheEntries.
func WithMaxEntries(n int) CacheOption { return func(c *Cache) { c.max = n } }

// NewCache wraps a. An allowed pair is kept for the decision's TTL, or ttl
// when the decision gives none; ttl 0 (or less) keeps nothing, whatever the
// decisions say, but concurrent requests for a pair still share a call.
func NewCache(a Authorizer, ttl time.Duration, opts ...CacheOption) *Cache {
	c := &Cache{
		next:    a,
		ttl:     ttl,
		max:     DefaultCacheEntries,
		now:     time.Now,
		entries: make(map[pair]*list.Element),
		order:   list.New(),
		calls:   make(map[pair]*authzCall),
	}
	for _, o := range opts {
		o(c)
	}
	if c.max <= 0 {
		c.max = DefaultCacheEntries
	}
	return c
}

// CacheStats counts a Cache's work since it was made.
type CacheStats struct {
	Hits      uint64 // requests answered from the cache
	Misses    uint64 // requests that were not: they made or joined a hook call
	HookCalls uint64 // calls of the wrapped Authorizer
	Entries   int    // pairs kept now, expired ones not yet dropped included
}

// Stats returns the counters, for metrics.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), HookCalls: c.hookCalls.Load(), Entries: n}
}

// CacheCounts returns Stats' counters, for the metrics package.
func (c *Cache) CacheCounts() (hits, misses, hookCalls uint64) {
	s := c.Stats()
	return s.Hits, s.Misses, s.HookCalls
}

// Authorize answers from the cache, or joins the call under way for the
// pair, or calls the wrapped Authorizer. A request that gives up (ctx done)
// while sharing a call leaves it running for the others; the call is
// cancelled only when nobody waits for it any more. The request that made
// the call waits for its end even then, which the wrapped Authorizer's own
// timeout bounds.
func (c *Cache) Authorize(ctx context.Context, req Request) (Decision, error) {
	key := pair{req.User, req.ThreadID}
	c.mu.Lock()
	if d, ok := c.lookup(key); ok {
		c.mu.Unlock()
		c.hits.Add(1)
		return d, nil
	}
	c.misses.Add(1)
	if call, ok := c.calls[key]; ok {
		call.waiters++
		c.mu.Unlock()
		select {
		case <-call.done:
			return call.dec, call.err
		case <-ctx.Done():
			c.leave(call)
			return Decision{}, fmt.Errorf("authorize: %w: %w", ErrUnavailable, ctx.Err())
		}
	}
	// The call must not end with this request's ctx while others share it.
	callCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	call := &authzCall{key: key, done: make(chan struct{}), waiters: 1, cancel: cancel}
	c.calls[key] = call
	c.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { c.leave(call) })
	defer stop()
	defer cancel()
	c.hookCalls.Add(1)
	ended := false
	defer func() {
		if !ended { // the wrapped Authorizer panicked: free those who wait
			c.finish(call, Decision{}, fmt.Errorf("authorize: %w: the hook panicked", ErrUnavailable))
		}
	}()
	dec, err := c.next.Authorize(callCtx, req)
	ended = true
	c.finish(call, dec, err)
	return dec, err
}

// finish ends call with its result, keeping an allowed pair unless revoked
// meanwhile, and wakes those who wait for it.
func (c *Cache) finish(call *authzCall, dec Decision, err error) {
	c.mu.Lock()
	if c.calls[call.key] == call {
		delete(c.calls, call.key)
	}
	if err == nil && dec.Allow && !call.revoked {
		c.store(call.key, dec.TTL)
	}
	call.dec, call.err = dec, err
	c.mu.Unlock()
	close(call.done)
}

// leave drops one waiter of call. When none is left the call is cancelled,
// and a request that comes after makes a call of its own.
func (c *Cache) leave(call *authzCall) {
	c.mu.Lock()
	defer c.mu.Unlock()
	call.waiters--
	if call.waiters > 0 {
		return
	}
	call.cancel()
	if c.calls[call.key] == call {
		delete(c.calls, call.key)
	}
}

// lookup returns the kept decision for key, dropping it if expired. c.mu is
// held.
func (c *Cache) lookup(key pair) (Decision, bool) {
	el, ok := c.entries[key]
	if !ok {
		return Decision{}, false
	}
	left := el.Value.(*cacheEntry).expires.Sub(c.now())
	if left <= 0 {
		c.drop(el)
		return Decision{}, false
	}
	return Decision{Allow: true, TTL: left}, true
}

// store keeps key for ttl (the default when zero, not at all when
// negative or when the cache is off). c.mu is held.
func (c *Cache) store(key pair, ttl time.Duration) {
	if ttl == 0 {
		ttl = c.ttl
	}
	if ttl <= 0 || c.ttl <= 0 {
		return
	}
	expires := c.now().Add(ttl)
	if el, ok := c.entries[key]; ok {
		el.Value.(*cacheEntry).expires = expires
		c.order.MoveToBack(el)
		return
	}
	for len(c.entries) >= c.max {
		c.drop(c.order.Front())
	}
	c.entries[key] = c.order.PushBack(&cacheEntry{key: key, expires: expires})
}

func (c *Cache) drop(el *list.Element) {
	c.order.Remove(el)
	delete(c.entries, el.Value.(*cacheEntry).key)
}

// Revoke forgets the allowed pairs of user on thread; an empty user or
// thread matches every one. A call under way for a matching pair is not
// kept when it ends.
func (c *Cache) Revoke(user, thread string) {
	match := func(k pair) bool {
		return (user == "" || k.user == user) && (thread == "" || k.thread == thread)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, call := range c.calls {
		if match(k) {
			call.revoked = true
		}
	}
	if user != "" && thread != "" {
		if el, ok := c.entries[pair{user, thread}]; ok {
			c.drop(el)
		}
		return
	}
	for k, el := range c.entries {
		if match(k) {
			c.drop(el)
		}
	}
}
