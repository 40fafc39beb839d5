package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// jwksKeys are the keys of a JWK Set fetched over HTTP and kept fresh.
//
// jwkset fetches, parses, validates and stores the set; this type only
// decides when. jwkset's own refresh goroutine (HTTPClientStorageOptions
// RefreshInterval) can be cancelled but not waited for, and Close must wait
// for what it started; its unknown-kid refresh makes every caller wait on
// the rate limiter in turn. So each fetch here is one
// jwkset.NewStorageFromHTTP without a refresh interval (a synchronous fetch
// that replaces the keys of the shared store), run from a goroutine this
// type owns, and concurrent callers share one fetch.
type jwksKeys struct {
	url     string
	client  *http.Client
	timeout time.Duration
	every   time.Duration
	log     *slog.Logger
	store   *jwkset.MemoryJWKSet
	unknown *rate.Limiter // fetches caused by an unknown kid

	ctx    context.Context // ends with close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	inflight *fetchCall
}

// fetchCall is one fetch of the set, shared by the callers that need it.
type fetchCall struct {
	done chan struct{}
	err  error
}

var asymmetricMethods = slices.Concat(rsaMethods, []string{"ES256", "ES384", "ES512"}, edMethods)

func newJWKSKeys(ctx context.Context, cfg JWTConfig) (*jwksKeys, error) {
	life, cancel := context.WithCancel(context.Background())
	k := &jwksKeys{
		url:     cfg.JWKSURL,
		client:  cfg.HTTPClient,
		timeout: cfg.JWKSTimeout,
		every:   cfg.JWKSRefreshInterval,
		log:     cfg.Logger,
		store:   jwkset.NewMemoryStorage(),
		unknown: rate.NewLimiter(rate.Every(cfg.JWKSUnknownKIDInterval), 1),
		ctx:     life,
		cancel:  cancel,
	}
	if err := k.fetch(ctx); err != nil {
		cancel()
		return nil, err
	}
	k.wg.Add(1)
	go k.refreshLoop()
	return k, nil
}

func (k *jwksKeys) methods() []string { return asymmetricMethods }

// close cancels under mu so that refresh never starts a fetch once close
// has begun waiting.
func (k *jwksKeys) close() {
	k.mu.Lock()
	k.cancel()
	k.mu.Unlock()
	k.wg.Wait()
}

// key finds the token's kid in the set, fetching the set again when the kid
// is unknown (see refreshFor), and checks that the token's alg suits the
// key.
func (k *jwksKeys) key(ctx context.Context, t *jwt.Token) (any, error) {
	kid, ok := t.Header["kid"].(string)
	if !ok || kid == "" {
		return nil, errors.New("no kid in the token header")
	}
	jwk, err := k.store.KeyRead(ctx, kid)
	if errors.Is(err, jwkset.ErrKeyNotFound) {
		if err := k.refreshFor(ctx, kid); err != nil {
			return nil, fmt.Errorf("kid not in the JWK Set: %w", err)
		}
		jwk, err = k.store.KeyRead(ctx, kid)
	}
	if err != nil {
		// The kid is the token's: not quoted.
		return nil, errors.New("kid not in the JWK Set")
	}
	m := jwk.Marshal()
	switch {
	case m.USE != "" && m.USE != jwkset.UseSig:
		return nil, fmt.Errorf("JWK %q is not a signature key (use %q)", m.KID, m.USE)
	case m.ALG != "" && m.ALG.String() != t.Method.Alg():
		return nil, fmt.Errorf("JWK %q is for %s, not %s", m.KID, m.ALG, t.Method.Alg())
	}
	algs, err := methodsFor(jwk.Key())
	if err != nil {
		return nil, fmt.Errorf("JWK %q: %w", m.KID, err)
	}
	if !slices.Contains(algs, t.Method.Alg()) {
		return nil, fmt.Errorf("JWK %q (%s) does not verify %s", m.KID, m.KTY, t.Method.Alg())
	}
	return jwk.Key(), nil
}

var errClosed = errors.New("verifier closed")

var errRefreshLimited = errors.New("the set was fetched for an unknown kid less than the unknown-kid interval ago")

// refreshFor fetches the set again for a token whose kid is unknown. A
// fetch under way is joined, whatever its cause: after a key rotation, the
// storm of reconnecting clients with the new kid all wait for one fetch.
// Otherwise a new fetch starts only if the rate limit allows, so made-up
// kids cannot make the verifier hammer the endpoint.
func (k *jwksKeys) refreshFor(ctx context.Context, kid string) error {
	k.mu.Lock()
	if k.ctx.Err() != nil {
		k.mu.Unlock()
		return errClosed
	}
	c := k.inflight
	if c == nil {
		// A fetch may have ended since the caller looked.
		if _, err := k.store.KeyRead(ctx, kid); err == nil {
			k.mu.Unlock()
			return nil
		}
		if !k.unknown.Allow() {
			k.mu.Unlock()
			return errRefreshLimited
		}
		var err error
		if c, err = k.startLocked(); err != nil {
			k.mu.Unlock()
			return err
		}
	}
	k.mu.Unlock()
	return c.wait(ctx)
}

// refresh fetches the set, or joins a fetch under way.
func (k *jwksKeys) refresh(ctx context.Context) error {
	k.mu.Lock()
	c := k.inflight
	if c == nil {
		var err error
		if c, err = k.startLocked(); err != nil {
			k.mu.Unlock()
			return err
		}
	}
	k.mu.Unlock()
	return c.wait(ctx)
}

// startLocked starts a fetch, with k.mu held. The fetch runs under the
// verifier's lifetime, not a caller's ctx: a caller that gives up does not
// fail the others.
func (k *jwksKeys) startLocked() (*fetchCall, error) {
	if k.ctx.Err() != nil {
		return nil, errClosed
	}
	c := &fetchCall{done: make(chan struct{})}
	k.inflight = c
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		c.err = k.fetch(k.ctx)
		k.mu.Lock()
		k.inflight = nil
		k.mu.Unlock()
		close(c.done)
	}()
	return c, nil
}

func (c *fetchCall) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (k *jwksKeys) refreshLoop() {
	defer k.wg.Done()
	tick := time.NewTicker(k.every)
	defer tick.Stop()
	for {
		select {
		case <-k.ctx.Done():
			return
		case <-tick.C:
			if err := k.refresh(k.ctx); err != nil && k.ctx.Err() == nil {
				k.log.Warn("JWK Set refresh failed; keeping the keys known", "url", k.url, "err", err)
			}
		}
	}
}

// fetch replaces the stored keys with the set served now. On failure the
// keys known are kept.
func (k *jwksKeys) fetch(ctx context.Context) error {
	_, err := jwkset.NewStorageFromHTTP(k.url, jwkset.HTTPClientStorageOptions{
		Client:      k.client,
		Ctx:         ctx,
		HTTPTimeout: k.timeout,
		Storage:     k.store,
	})
	if err != nil {
		return fmt.Errorf("JWK Set %s: %w", k.url, err)
	}
	return nil
}
