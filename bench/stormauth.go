package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/auth"
	"github.com/threadbus/threadbus/subjects"
)

const (
	// authStormTarget is the time the authorized 10,000-connection storm
	// must stay under (issue 8).
	authStormTarget = 5 * time.Second
	// tokenTTL outlives any phase: a token that expired mid-phase would
	// close its connection with 4001 and count as a failure.
	tokenTTL = 24 * time.Hour
	// hookQueue is the queue group the bench's hook answers in, as a
	// backend's responders would.
	hookQueue = "bench-authz"
	// authPhase names the authorized storm's threads and progress lines.
	authPhase = "storm-auth"
)

// hookAllow is the bench's answer to every hook request.
var hookAllow = []byte(`{"allow":true,"ttl_s":60}`)

// credentials are what the authorized storm's sidecar and connections
// need: a fresh HMAC secret in a file, and a token per connection, each of
// its own user.
type credentials struct {
	dir     string
	args    []string          // serve's identity and authorization flags
	bearer  []string          // connection i's Authorization header value
	userOf  map[string]string // thread -> the user of the connection that binds it
	minting time.Duration     // how long minting every token took
}

// newCredentials writes a random secret and mints a token for each of
// conns users, user i binding thread i of the phase.
func newCredentials(e *env, conns int) (*credentials, error) {
	raw := make([]byte, auth.MinHMACSecretBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	secret := []byte(hex.EncodeToString(raw)) // 64 bytes
	dir, err := os.MkdirTemp("", "threadbus-bench-auth-")
	if err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	file := filepath.Join(dir, "jwt-secret")
	if err := os.WriteFile(file, secret, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("secret: %w", err)
	}
	c := &credentials{
		dir:    dir,
		args:   []string{"--auth", "jwt", "--jwt-secret-file", file, "--authz", "nats"},
		bearer: make([]string, conns),
		userOf: make(map[string]string, conns),
	}
	began, now := time.Now(), time.Now()
	for i := range conns {
		user := fmt.Sprintf("bench_%s_user_%d", e.run, i)
		tok, err := auth.MintHS256(secret, user, tokenTTL, nil, now)
		if err != nil {
			c.close()
			return nil, err
		}
		c.bearer[i] = "Bearer " + tok
		c.userOf[e.thread(authPhase, i)] = user
	}
	c.minting = time.Since(began)
	return c, nil
}

// header is connection i's handshake headers.
func (c *credentials) header(i int) http.Header {
	return http.Header{"Authorization": {c.bearer[i]}}
}

func (c *credentials) close() { os.RemoveAll(c.dir) }

// hook answers threadbus.authz.bind as a backend would, from a queue group
// on its own NATS connection: it allows every request and counts them,
// and checks that each names the user whose token binds the thread.
type hook struct {
	nc     *nats.Conn
	userOf map[string]string // read only

	calls      atomic.Int64
	wrongUser  atomic.Int64 // requests whose user is not the thread's
	unreadable atomic.Int64
	unanswered atomic.Int64 // replies that could not be sent
}

// hookCounts is what a hook counted.
type hookCounts struct {
	calls, wrongUser, unreadable, unanswered int64
}

// startHook subscribes GOMAXPROCS responders in one queue group, so that
// requests are answered in parallel, and returns once the server has them.
func startHook(url string, userOf map[string]string) (*hook, error) {
	nc, err := nats.Connect(url, nats.Name("bench-authz-hook"), nats.Timeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("authz hook: connect to nats %s: %w", url, err)
	}
	h := &hook{nc: nc, userOf: userOf}
	for range runtime.GOMAXPROCS(0) {
		if _, err := nc.QueueSubscribe(subjects.AuthzBind, hookQueue, h.answer); err != nil {
			nc.Close()
			return nil, fmt.Errorf("authz hook: subscribe %s: %w", subjects.AuthzBind, err)
		}
	}
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		nc.Close()
		return nil, fmt.Errorf("authz hook: %w", err)
	}
	return h, nil
}

func (h *hook) answer(m *nats.Msg) {
	h.calls.Add(1)
	var req auth.Request
	if err := json.Unmarshal(m.Data, &req); err != nil {
		h.unreadable.Add(1)
	} else if h.userOf[req.ThreadID] != req.User {
		h.wrongUser.Add(1)
	}
	if err := m.Respond(hookAllow); err != nil {
		h.unanswered.Add(1)
	}
}

func (h *hook) counts() hookCounts {
	return hookCounts{h.calls.Load(), h.wrongUser.Load(), h.unreadable.Load(), h.unanswered.Load()}
}

// close ends the connection; nats.go waits for the responders.
func (h *hook) close() { h.nc.Close() }

// runAuthStorm runs the storm against a fresh sidecar with --auth jwt
// --authz nats, its cache cold, and reports it next to the storm without
// auth of the same run (plain). label and boundName are the plain result's.
func runAuthStorm(ctx context.Context, e *env, label, boundName string, conns int, plain stormPhase) (Result, error) {
	res := Result{Label: label + ", --auth jwt --authz nats"}
	e.prog.note("%s: minting %d tokens, one user per connection", authPhase, conns)
	cred, err := newCredentials(e, conns)
	if err != nil {
		return res, err
	}
	defer cred.close()

	var (
		ab stormPhase
		hc hookCounts
	)
	side := stormSide{phase: authPhase, header: cred.header, failFast: true}
	err = e.phaseWith(ctx, &res, "threadbus --auth jwt --authz nats", cred.args, func(t *target) error {
		h, err := startHook(t.NATS, cred.userOf)
		if err != nil {
			return err
		}
		defer h.close()
		ab, err = stormThreadbus(ctx, e, t, conns, side)
		hc = h.counts()
		return err
	})
	if res.Sidecar != "" {
		res.Sidecar += " with --auth jwt --jwt-secret-file <fresh random secret> --authz nats"
	}
	if err != nil {
		return res, err
	}
	authStormFigures(&res, e, conns, boundName, plain, ab, hc)
	res.note("tokens: each connection presents its own HS256 token in an Authorization: Bearer header, %d distinct users (one per connection, each binding its own thread), minted in %v before the phase, outside the measured window: every bind misses the cache and makes one hook call",
		conns, cred.minting.Round(time.Millisecond))
	return res, nil
}

// authStormFigures adds the authorized storm's figures and notes to res,
// each next to the storm without auth (plain).
func authStormFigures(res *Result, e *env, conns int, boundName string, plain, ab stormPhase, hc hookCounts) {
	const plainName = "threadbus without auth, same run"
	fig := func(f Figure, v float64) Figure { return f.withBaseline(plainName, v) }
	failed := conns - ab.complete
	storm := fig(Figure{Name: "bind storm: all replays complete", Unit: UnitSeconds, Value: ab.storm.Seconds()}, plain.storm.Seconds())
	if conns >= stormTargetConns {
		storm = storm.below(authStormTarget.Seconds(), false)
		storm.Target.Goal += ", every conn bound"
		storm.Target.Met = storm.Target.Met && failed == 0
	}
	res.add(storm)
	res.add(fig(Figure{Name: "conns failed (refused, bind denied or incomplete)", Unit: UnitCount, Value: float64(failed)}, float64(conns-plain.complete)).below(0, true))
	res.add(fig(Figure{Name: "events lost", Unit: UnitCount, Value: float64(ab.lost)}, float64(plain.lost)).below(0, true))
	res.add(Figure{Name: "authz hook calls answered by the bench", Unit: UnitCount, Value: float64(hc.calls)})
	res.add(fig(Figure{Name: "one bind, p50", Unit: UnitSeconds, Value: ab.perConn.P50.Seconds()}, plain.perConn.P50.Seconds()))
	res.add(fig(Figure{Name: "one bind, p99", Unit: UnitSeconds, Value: ab.perConn.P99.Seconds()}, plain.perConn.P99.Seconds()))
	res.add(fig(Figure{Name: "sidecar CPU during the storm", Unit: UnitSeconds, Value: ab.cpu.Sidecar.Seconds()}, plain.cpu.Sidecar.Seconds()))
	res.add(fig(Figure{Name: "bench CPU during the storm (answers the hook)", Unit: UnitSeconds, Value: ab.cpu.Bench.Seconds()}, plain.cpu.Bench.Seconds()))
	res.add(fig(Figure{Name: "open all conns (token verified at the handshake)", Unit: UnitSeconds, Value: ab.connect.Seconds()}, plain.connect.Seconds()))
	res.add(fig(Figure{Name: boundName, Unit: UnitBytes, Value: ab.perConnRSS(ab.bound, conns)}, plain.perConnRSS(plain.bound, conns)))

	res.note("threadbus --auth jwt: %d/%d connections complete, %d refused at the handshake, %d binds answered with an error frame, %d events lost, %d out of order, %d thread_bound with another count, %d error frames; storm CPU %s",
		ab.complete, conns, ab.refused, ab.failed, ab.lost, ab.odd, ab.short, ab.errors, ab.cpu)
	if ab.refusal != "" {
		res.note("threadbus --auth jwt: first refusal: %s", ab.refusal)
	}
	if ab.firstErr != "" {
		res.note("threadbus --auth jwt: first error frame: %s", ab.firstErr)
	}
	if failed > 0 {
		res.note("threadbus --auth jwt: %d connections failed: the storm time is until the last of them failed or timed out (wait timeout %v), and its target is missed", failed, e.cfg.WaitTimeout)
	}
	res.note("authz hook (bench process, queue group %q, %d responders): %d calls, %d naming another user than the thread's token, %d unreadable, %d replies not sent; every request allowed with ttl_s 60",
		hookQueue, runtime.GOMAXPROCS(0), hc.calls, hc.wrongUser, hc.unreadable, hc.unanswered)
	if s := authCounters(ab.mBase, ab.mBound); s != "" {
		res.note("threadbus --auth jwt sidecar counters: %s", s)
	}
	res.note("threadbus without auth, same run: %d/%d connections complete; storm CPU %s", plain.complete, conns, plain.cpu)
	res.note("threadbus --auth jwt sidecar RSS: %s before connecting, %s connected, %s bound",
		formatBytes(float64(ab.base.RSS)), formatBytes(float64(ab.idle.RSS)), formatBytes(float64(ab.bound.RSS)))
}

// authCounters describes what the sidecar's identity and authorization
// counters moved by between two scrapes; "" without them.
func authCounters(before, after metricSet) string {
	if before == nil || after == nil {
		return ""
	}
	const calls = "threadbus_authz_hook_calls_total"
	if _, ok := after[calls]; !ok {
		return ""
	}
	d := func(name string) float64 { return after[name] - before[name] }
	return fmt.Sprintf("%.0f hook calls, %.0f cache hits, %.0f misses; decisions %.0f allow, %.0f deny, %.0f unavailable; handshakes refused %.0f unauthorized, %.0f token_expired",
		d(calls), d("threadbus_authz_cache_hits_total"), d("threadbus_authz_cache_misses_total"),
		d(`threadbus_authz_decisions_total{result="allow"}`), d(`threadbus_authz_decisions_total{result="deny"}`),
		d(`threadbus_authz_decisions_total{result="unavailable"}`),
		d(`threadbus_auth_refused_total{code="unauthorized"}`), d(`threadbus_auth_refused_total{code="token_expired"}`))
}
