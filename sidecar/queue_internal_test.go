package sidecar

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/threadbus/threadbus/bus"
)

// TestHeldBytesBounded: for a client that never reads, what the connection
// holds for sending (queue and the batch being written) never exceeds
// SendQueueBytes; the connection is closed as a slow consumer instead.
func TestHeldBytesBounded(t *testing.T) {
	ns, err := bus.StartServer(bus.ServerConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	b, err := bus.Open(context.Background(), bus.Config{URL: ns.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	const limit = 64 << 10
	s, err := New(Config{Bus: b, SendQueueBytes: limit})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	t.Cleanup(func() { s.Close(context.Background()) })

	// A client with a small receive buffer that never reads.
	dialer := &net.Dialer{Control: nil}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dialer.DialContext(ctx, network, addr)
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetReadBuffer(4096)
		}
		return nc, err
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+"/ws", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	var c *conn
	for c == nil {
		s.mu.Lock()
		for _, cc := range s.conns {
			c = cc
		}
		s.mu.Unlock()
		if ctx.Err() != nil {
			t.Fatal("no connection registered")
		}
	}
	frame := []byte(`"` + strings.Repeat("x", 16<<10) + `"`)
	sawInflight := false
	for i := 0; ; i++ {
		c.send(frame)
		// Let the writer take what is queued, so that once the socket is
		// full it blocks holding a batch while more is queued.
		for wait := time.Now().Add(20 * time.Millisecond); time.Now().Before(wait); time.Sleep(time.Millisecond) {
			c.mu.Lock()
			taken := c.sendQueue.bytes == 0
			c.mu.Unlock()
			if taken {
				break
			}
		}
		c.mu.Lock()
		held, inflight, closing := c.sendQueue.bytes+c.sendQueue.inflight, c.sendQueue.inflight, c.sendQueue.closeCode != 0 || c.dead
		c.mu.Unlock()
		sawInflight = sawInflight || inflight > 0
		if held > limit {
			t.Fatalf("after %d frames the connection holds %d bytes for sending, over %d", i+1, held, limit)
		}
		if closing {
			break
		}
		if i > 10_000 {
			t.Fatal("a client that never reads was never closed")
		}
	}
	if !sawInflight {
		t.Fatal("the writer never held a batch when sampled: the test did not reach the case it checks")
	}
}
