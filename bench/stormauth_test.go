package bench

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestStormAuth runs the storm with StormConfig.Auth at a small scale: the
// authorized storm is a second result next to the plain one, every
// connection presents its own user's token, the bench's hook is asked once
// per bind (the cache is cold and no pair repeats), and nothing is lost.
func TestStormAuth(t *testing.T) {
	const conns = 50
	cfg := tinyConfig()
	cfg.Scenarios = []Scenario{Storm}
	cfg.Storm = StormConfig{Conns: []int{conns}, Events: 5, Auth: true}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Results) != 2 {
		t.Fatalf("%d results, want the storm and the authorized storm: %+v", len(rep.Results), rep.Results)
	}
	plain, authed := rep.Results[0], rep.Results[1]
	if strings.Contains(plain.Label, "--auth") || !strings.Contains(authed.Label, "--auth jwt --authz nats") {
		t.Errorf("labels %q and %q", plain.Label, authed.Label)
	}
	if authed.Scenario != Storm || !strings.Contains(authed.Sidecar, "--auth jwt") {
		t.Errorf("authorized storm: scenario %q, sidecar %q", authed.Scenario, authed.Sidecar)
	}
	for _, name := range []string{"bind storm: all replays complete", "one bind, p50", "one bind, p99", "open all conns (token verified at the handshake)"} {
		wantPositive(t, authed, name, true)
		if f := figure(t, authed, name); f.Baseline.Name != "threadbus without auth, same run" {
			t.Errorf("%s: baseline %q, want the storm without auth", name, f.Baseline.Name)
		}
	}
	wantZero(t, authed, "events lost", true)
	wantZero(t, authed, "conns failed (refused, bind denied or incomplete)", true)
	if f := figure(t, authed, "authz hook calls answered by the bench"); f.Value != conns {
		t.Errorf("hook calls %v, want %d: one per bind with a cold cache and a user per connection", f.Value, conns)
	}
	notes := strings.Join(authed.Notes, "\n")
	for _, want := range []string{
		fmt.Sprintf("%d/%d connections complete, 0 refused at the handshake, 0 binds answered with an error frame", conns, conns),
		fmt.Sprintf("%d calls, 0 naming another user", conns),
		fmt.Sprintf("%d hook calls, 0 cache hits, %d misses; decisions %d allow, 0 deny, 0 unavailable", conns, conns, conns),
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	var table strings.Builder
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", table.String())
}

// TestStormAuthCountsFailures checks that the authorized storm counts a
// connection whose token is refused, and a bind the hook never answers, as
// failures, and does not wait for them until the wait timeout.
func TestStormAuthCountsFailures(t *testing.T) {
	const conns, badEvery = 20, 4
	cfg, err := Config{Binary: binPath, WaitTimeout: 30 * time.Second, DialWorkers: 4,
		Storm: StormConfig{Conns: []int{conns}, Events: 3}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := &env{cfg: cfg, run: "authfail", hc: &http.Client{}, log: cfg.Logger}
	cred, err := newCredentials(e, conns)
	if err != nil {
		t.Fatal(err)
	}
	defer cred.close()
	// Every badEvery-th connection presents its token with the signature
	// cut short.
	header := func(i int) http.Header {
		h := cred.header(i)
		if i%badEvery == 0 {
			h.Set("Authorization", cred.bearer[i][:len(cred.bearer[i])-4])
		}
		return h
	}
	wantRefused := conns / badEvery

	for _, withHook := range []bool{true, false} {
		t.Run(fmt.Sprintf("hook=%v", withHook), func(t *testing.T) {
			var p stormPhase
			var res Result
			err := e.phaseWith(ctx, &res, "auth", cred.args, func(tg *target) error {
				if withHook {
					h, err := startHook(tg.NATS, cred.userOf)
					if err != nil {
						return err
					}
					defer h.close()
				}
				var err error
				p, err = stormThreadbus(ctx, e, tg, conns, stormSide{phase: authPhase, header: header, failFast: true})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if p.refused != wantRefused || !strings.Contains(p.refusal, "unauthorized") {
				t.Errorf("refused %d (first: %q), want %d unauthorized", p.refused, p.refusal, wantRefused)
			}
			wantComplete, wantFailed := conns-wantRefused, 0
			if !withHook { // no responders: every bind is denied, authz_unavailable
				wantComplete, wantFailed = 0, conns-wantRefused
				if !strings.Contains(p.firstErr, "authz_unavailable") {
					t.Errorf("first error frame %q, want authz_unavailable", p.firstErr)
				}
			}
			if p.complete != wantComplete || p.failed != wantFailed {
				t.Errorf("%d complete, %d binds failed; want %d and %d", p.complete, p.failed, wantComplete, wantFailed)
			}
			if p.storm >= cfg.WaitTimeout {
				t.Errorf("storm took %v: it waited for failed connections until the wait timeout", p.storm)
			}
		})
	}
}
