package sidecar_test

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/threadbus/threadbus/sidecar"
)

// tryDial dials with extra headers and returns the HTTP status of a refusal
// (0 when the handshake succeeded).
func (e *env) tryDial(h http.Header) (*websocket.Conn, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, e.url, &websocket.DialOptions{HTTPHeader: h, Host: h.Get("Host")})
	if err != nil {
		if resp == nil {
			e.t.Fatalf("dial: %v", err)
		}
		return nil, resp.StatusCode
	}
	e.t.Cleanup(func() { ws.CloseNow() })
	return ws, 0
}

// eventually polls cond until it holds or 10 s have passed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMaxConnections(t *testing.T) {
	e := newEnv(t, sidecar.Config{Admission: sidecar.Admission{MaxConnections: 2}})
	first, _ := e.tryDial(nil)
	e.tryDial(nil)
	if _, status := e.tryDial(nil); status != http.StatusServiceUnavailable {
		t.Fatalf("third connection: status %d, want 503", status)
	}
	if got := e.metric(refused("max_conns")); got != 1 {
		t.Fatalf("refused max_conns = %v, want 1", got)
	}
	first.Close(websocket.StatusNormalClosure, "")
	eventually(t, "a connection slot after one closed", func() bool {
		ws, status := e.tryDial(nil)
		if ws != nil {
			ws.CloseNow()
		}
		return status == 0
	})
}

func TestMaxConnsPerIP(t *testing.T) {
	lo := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	t.Run("peer", func(t *testing.T) {
		e := newEnv(t, sidecar.Config{Admission: sidecar.Admission{MaxConnsPerIP: 1, Exempt: []netip.Prefix{}}})
		e.tryDial(nil)
		if _, status := e.tryDial(nil); status != http.StatusServiceUnavailable {
			t.Fatalf("second connection from 127.0.0.1: status %d, want 503", status)
		}
		if got := e.metric(refused("max_conns_ip")); got != 1 {
			t.Fatalf("refused max_conns_ip = %v, want 1", got)
		}
	})
	t.Run("exempt", func(t *testing.T) {
		e := newEnv(t, sidecar.Config{Admission: sidecar.Admission{MaxConnsPerIP: 1}}) // loopback exempt by default
		for range 3 {
			if _, status := e.tryDial(nil); status != 0 {
				t.Fatalf("loopback connection refused with %d", status)
			}
		}
	})
	t.Run("forwarded", func(t *testing.T) {
		e := newEnv(t, sidecar.Config{Admission: sidecar.Admission{MaxConnsPerIP: 1, Exempt: []netip.Prefix{}, TrustedProxies: lo}})
		xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }
		if _, status := e.tryDial(xff("203.0.113.7")); status != 0 {
			t.Fatalf("first client: %d", status)
		}
		// The rightmost address that is not a trusted proxy is the client.
		if _, status := e.tryDial(xff("203.0.113.9, 127.0.0.1")); status != 0 {
			t.Fatalf("second client: %d", status)
		}
		if _, status := e.tryDial(xff("198.51.100.1, 203.0.113.7")); status != http.StatusServiceUnavailable {
			t.Fatalf("first client again (spoofed left hop): status %d, want 503", status)
		}
	})
	t.Run("untrusted forwarded", func(t *testing.T) {
		e := newEnv(t, sidecar.Config{Admission: sidecar.Admission{MaxConnsPerIP: 1, Exempt: []netip.Prefix{}}})
		e.tryDial(http.Header{"X-Forwarded-For": {"203.0.113.7"}})
		if _, status := e.tryDial(http.Header{"X-Forwarded-For": {"203.0.113.8"}}); status != http.StatusServiceUnavailable {
			t.Fatalf("X-Forwarded-For from an untrusted peer was believed: status %d, want 503", status)
		}
	})
}

// TestAllowedHosts: a sidecar on localhost refuses the DNS-rebinding shape,
// Host and Origin both naming the attacker's domain.
func TestAllowedHosts(t *testing.T) {
	e := newEnv(t, sidecar.Config{Admission: sidecar.Admission{AllowedHosts: sidecar.LoopbackHosts}})
	evil := http.Header{"Host": {"evil.example"}, "Origin": {"http://evil.example"}}
	if _, status := e.tryDial(evil); status != http.StatusForbidden {
		t.Fatalf("rebinding handshake: status %d, want 403", status)
	}
	if got := e.metric(refused("host")); got != 1 {
		t.Fatalf("refused host = %v, want 1", got)
	}
	for _, host := range []string{"localhost:8080", "app.localhost", "127.0.0.1:9", "[::1]:80"} {
		if _, status := e.tryDial(http.Header{"Host": {host}}); status != 0 {
			t.Errorf("Host %s refused with %d", host, status)
		}
	}
}

func TestConnRatePerIP(t *testing.T) {
	e := newEnv(t, sidecar.Config{Admission: sidecar.Admission{
		MaxConnsPerIP: -1, ConnRatePerIP: 0.001, ConnBurstPerIP: 2, Exempt: []netip.Prefix{},
	}})
	e.tryDial(nil)
	e.tryDial(nil)
	if _, status := e.tryDial(nil); status != http.StatusServiceUnavailable {
		t.Fatalf("third connection within the burst of 2: status %d, want 503", status)
	}
	if got := e.metric(refused("conn_rate_ip")); got != 1 {
		t.Fatalf("refused conn_rate_ip = %v, want 1", got)
	}
}
