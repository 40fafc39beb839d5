package e2e

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// /healthz and /readyz answer 200 on a running sidecar.
func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	sc := startSidecar(t, sidecarConfig{})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := hc.Get("http://" + sc.HTTPAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s, want 200", path, resp.Status)
		}
	}
}

// The legacy browser client offers the subprotocols jwt-auth and
// jwt.<token>; the handshake must select jwt-auth or the browser fails it.
// Without --auth the token is not verified (auth_test.go covers --auth jwt),
// and it is never logged.
func TestLegacySubprotocol(t *testing.T) {
	t.Parallel()
	sc := startSidecar(t, sidecarConfig{})
	token := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJlMmUtc2VjcmV0LXVzZXIifQ.c2lnbmF0dXJlLWUyZQ"
	encoded := base64.RawURLEncoding.EncodeToString([]byte(token))
	c := dial(t, sc, "browser", dialOptions{
		Query:        "thread_id=thread_sub",
		Subprotocols: []string{"jwt-auth", "jwt." + encoded},
	})
	if got := c.ws.Subprotocol(); got != "jwt-auth" {
		t.Errorf("selected subprotocol %q, want %q", got, "jwt-auth")
	}
	c.expectBound("thread_sub")
	c.expectQuiet()

	// Other clients send the token as a bearer header.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	ws, _, err := websocket.Dial(ctx, sc.wsURL(""), &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		t.Fatalf("dial with a bearer token: %v", err)
	}
	typ, b, err := ws.Read(ctx)
	ws.CloseNow()
	if err != nil || typ != websocket.MessageText || parseFrame(b, false).Type != typeEstablished {
		t.Fatalf("with a bearer token: first frame %s, %v", b, err)
	}
	c.close()

	for _, secret := range []string{token, encoded, "c2lnbmF0dXJlLWUyZQ"} {
		if lines := sc.logs.grep(secret); len(lines) > 0 {
			t.Errorf("the sidecar logged the token: %s", strings.Join(lines, "\n"))
		}
	}
}

// Every flag can also be set as THREADBUS_<FLAG>.
func TestFlagsFromEnv(t *testing.T) {
	t.Parallel()
	sc := startSidecar(t, sidecarConfig{Env: []string{
		"THREADBUS_SIDECAR_ID=from-env",
		"THREADBUS_MAX_FRAME_BYTES=1024",
	}})
	ag := newAgent(t, sc.NATSURL)
	c := dial(t, sc, "client", dialOptions{})
	sub, err := ag.nc.SubscribeSync("conn." + c.CID + ".in")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := ag.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	msg := `{"type":"stop_agent","payload":{}}`
	c.send(msg)
	m, err := sub.NextMsg(waitTimeout)
	if err != nil {
		t.Fatalf("frame not seen on conn.%s.in: %v", c.CID, err)
	}
	checkInbound(t, m, "conn."+c.CID+".in", msg, c.CID, "from-env")

	c.send(`{"type":"user_message","payload":{"content":"` + strings.Repeat("x", 1100) + `"}}`)
	if ce := c.expectClose(waitTimeout); ce.Code != websocket.StatusMessageTooBig {
		t.Fatalf("a 1.1 KiB frame with THREADBUS_MAX_FRAME_BYTES=1024 closed with %v, want %d", ce, websocket.StatusMessageTooBig)
	}
}
