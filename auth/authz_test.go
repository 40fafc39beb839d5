package auth_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/auth"
	"github.com/threadbus/threadbus/subjects"
)

var hookReq = auth.Request{
	User: "u-42", ThreadID: "thread_ab12", ConnectionID: "C1", SidecarID: "S1",
	Via: auth.ViaSwitch, Claims: map[string]any{"sub": "u-42", "role": "admin"},
}

// checkHookRequest fails unless body is hookReq as the contract writes it.
func checkHookRequest(t *testing.T, body []byte) {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Errorf("hook request %s: %v", body, err)
		return
	}
	want := map[string]any{"user": "u-42", "thread_id": "thread_ab12", "connection_id": "C1", "sidecar_id": "S1", "via": "switch"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("hook request %s: %s = %v; want %v", body, k, got[k], v)
		}
	}
	if c, _ := got["claims"].(map[string]any); c["role"] != "admin" {
		t.Errorf("hook request %s: claims without role admin", body)
	}
}

// authzCase is a hook behaviour and what an Authorizer must make of it.
type authzCase struct {
	name  string
	reply string // "" with hang: no reply until the caller gives up
	hang  bool
	want  auth.Decision
	err   string // in an ErrUnavailable error; empty: a decision
}

var authzCases = []authzCase{
	{name: "allow with ttl", reply: `{"allow":true,"ttl_s":60}`, want: auth.Decision{Allow: true, TTL: time.Minute}},
	{name: "allow with a fractional ttl", reply: `{"allow":true,"ttl_s":1.5}`, want: auth.Decision{Allow: true, TTL: 1500 * time.Millisecond}},
	{name: "allow without ttl", reply: `{"allow":true}`, want: auth.Decision{Allow: true}},
	{name: "allow, do not cache", reply: `{"allow":true,"ttl_s":0}`, want: auth.Decision{Allow: true, TTL: -1}},
	{name: "allow with a huge ttl", reply: `{"allow":true,"ttl_s":1e300}`, want: auth.Decision{Allow: true, TTL: 24 * time.Hour}},
	{name: "deny with code", reply: `{"allow":false,"code":"thread_archived","message":"gone"}`, want: auth.Decision{Code: "thread_archived", Message: "gone"}},
	{name: "deny without code", reply: `{"allow":false,"message":"not yours"}`, want: auth.Decision{Code: auth.CodeThreadForbidden, Message: "not yours"}},
	{name: "deny with a code unfit for clients", reply: `{"allow":false,"code":"Bad Code\n"}`, want: auth.Decision{Code: auth.CodeThreadForbidden}},
	{name: "garbage", reply: `not json`, err: "unreadable reply"},
	{name: "no allow", reply: `{"ok":true}`, err: `no boolean "allow"`},
	{name: "allow not a boolean", reply: `{"allow":"yes"}`, err: "unreadable reply"},
	{name: "timeout", hang: true, err: "within 200ms"},
}

func checkDecision(t *testing.T, tc authzCase, d auth.Decision, err error) {
	t.Helper()
	if tc.err != "" {
		if !errors.Is(err, auth.ErrUnavailable) || !strings.Contains(err.Error(), tc.err) {
			t.Fatalf("Authorize = %+v, %v; want ErrUnavailable saying %q", d, err, tc.err)
		}
		return
	}
	if err != nil || d != tc.want {
		t.Fatalf("Authorize = %+v, %v; want %+v", d, err, tc.want)
	}
}

func TestNATSAuthorizer(t *testing.T) {
	ns, nc := startNATS(t)
	backend := connect(t, ns.ClientURL())
	for _, tc := range authzCases {
		t.Run(tc.name, func(t *testing.T) {
			sub, err := backend.QueueSubscribe(subjects.AuthzBind, "backend", func(m *nats.Msg) {
				checkHookRequest(t, m.Data)
				if !tc.hang {
					_ = m.Respond([]byte(tc.reply))
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = sub.Unsubscribe()
				_ = backend.Flush()
			}()
			if err := backend.Flush(); err != nil {
				t.Fatal(err)
			}
			d, err := auth.NewNATSAuthorizer(nc, 200*time.Millisecond).Authorize(context.Background(), hookReq)
			checkDecision(t, tc, d, err)
		})
	}
	t.Run("no responders", func(t *testing.T) {
		d, err := auth.NewNATSAuthorizer(nc, 0).Authorize(context.Background(), hookReq)
		if !errors.Is(err, auth.ErrUnavailable) || !strings.Contains(err.Error(), "no responders on "+subjects.AuthzBind) {
			t.Fatalf("Authorize = %+v, %v; want ErrUnavailable: no responders", d, err)
		}
	})
	t.Run("connection closed", func(t *testing.T) {
		closed := connect(t, ns.ClientURL())
		closed.Close()
		if _, err := auth.NewNATSAuthorizer(closed, 0).Authorize(context.Background(), hookReq); !errors.Is(err, auth.ErrUnavailable) {
			t.Fatalf("Authorize on a closed connection: %v; want ErrUnavailable", err)
		}
	})
}

func TestHTTPAuthorizer(t *testing.T) {
	var status atomic.Int64
	var reply atomic.Value
	var hang atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("hook called with %s, Content-Type %q; want POST of application/json", r.Method, r.Header.Get("Content-Type"))
		}
		body, _ := io.ReadAll(r.Body)
		checkHookRequest(t, body)
		if hang.Load() {
			<-r.Context().Done()
			return
		}
		w.WriteHeader(int(status.Load()))
		_, _ = io.WriteString(w, reply.Load().(string))
	}))
	t.Cleanup(srv.Close)
	a, err := auth.NewHTTPAuthorizer(srv.URL+"/authz", srv.Client(), 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	cases := append(authzCases,
		authzCase{name: "500", reply: `{"allow":true}`, err: "answered 500 Internal Server Error"},
		authzCase{name: "403 with a denial", reply: `{"allow":false}`, err: "answered 403"},
		authzCase{name: "body too large", reply: `{"allow":true,"message":"` + strings.Repeat("x", 70<<10) + `"}`, err: "over 65536 bytes"},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code := http.StatusOK
			if n, ok := strings.CutPrefix(tc.err, "answered "); ok {
				code = map[string]int{"500": 500, "403": 403}[n[:3]]
			}
			status.Store(int64(code))
			reply.Store(tc.reply)
			hang.Store(tc.hang)
			d, err := a.Authorize(context.Background(), hookReq)
			checkDecision(t, tc, d, err)
		})
	}
	t.Run("nothing listens", func(t *testing.T) {
		a, err := auth.NewHTTPAuthorizer("http://user:hunter2@127.0.0.1:1/authz", nil, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.Authorize(context.Background(), hookReq)
		if !errors.Is(err, auth.ErrUnavailable) || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("Authorize: %v; want ErrUnavailable without the password", err)
		}
	})
	for _, bad := range []string{"", "ftp://x/y", "/authz", "http://", "://x"} {
		if _, err := auth.NewHTTPAuthorizer(bad, nil, 0); err == nil {
			t.Errorf("NewHTTPAuthorizer(%q) succeeded; want an error", bad)
		}
	}
}
