package sidecar_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/threadbus/threadbus/sidecar"
)

// rawClient is a WebSocket client written by hand, for what a library
// client does not do: send frames together with the handshake, or never
// answer a close.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

// dialRaw opens a TCP connection to the server at base (http://host:port)
// and sends the upgrade request followed at once by frames, in one write.
func dialRaw(t *testing.T, base string, frames ...string) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	out := []byte("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	for _, f := range frames {
		out = appendMaskedText(out, []byte(f))
	}
	if _, err := nc.Write(out); err != nil {
		t.Fatal(err)
	}
	c := &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %s", resp.Status)
	}
	return c
}

// appendMaskedText appends a client text frame (masked, as clients must).
func appendMaskedText(b, payload []byte) []byte {
	b = append(b, 0x81)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := [4]byte{1, 2, 3, 4}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// read reads one unfragmented server text frame and decodes it.
func (c *rawClient) read() map[string]any {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h [2]byte
	if _, err := readFull(c.br, h[:]); err != nil {
		c.t.Fatalf("read frame header: %v", err)
	}
	if h[0] != 0x81 || h[1]&0x80 != 0 {
		c.t.Fatalf("frame header %x: want an unmasked, final text frame", h)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		readFull(c.br, ext[:])
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		readFull(c.br, ext[:])
		n = binary.BigEndian.Uint64(ext[:])
	}
	data := make([]byte, n)
	if _, err := readFull(c.br, data); err != nil {
		c.t.Fatalf("read frame payload: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		c.t.Fatalf("frame %s: %v", data, err)
	}
	return m
}

func readFull(br *bufio.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k, err := br.Read(p[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestFramesSentWithHandshake: frames a client sends right behind its
// upgrade request, which net/http has already read, are not lost; one is
// larger than the connection's read buffer.
func TestFramesSentWithHandshake(t *testing.T) {
	e := newEnv(t, sidecar.Config{})
	big := strings.Repeat("x", 3000)
	c := dialRaw(t, e.http,
		`{"type":"ping","timestamp":1}`,
		`{"type":"ping","timestamp":2,"payload":{"pad":"`+big+`"}}`,
		`{"type":"ping","timestamp":3}`)
	if f := c.read(); f["type"] != "connection_established" {
		t.Fatalf("first frame %v", f)
	}
	for i := 1; i <= 3; i++ {
		f := c.read()
		// Pong 2 proves the large frame was read whole: a cut one is not
		// JSON and would be answered with an error frame.
		if f["type"] != "pong" || f["timestamp"] != float64(i) {
			t.Fatalf("got %v, want pong %d", f, i)
		}
	}
}

// TestCloseCutsConnections: when Close's context ends before clients
// complete the close handshake, Close cuts their connections (reads run
// without a context) and returns, leaving no goroutine behind.
func TestCloseCutsConnections(t *testing.T) {
	b := openBus(t)
	s, err := sidecar.New(sidecar.Config{Bus: b})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)

	// Clients that never answer the close: one unbound, one bound.
	idle := dialRaw(t, hs.URL)
	idle.read()
	bound := dialRaw(t, hs.URL, `{"type":"switch_thread","payload":{"thread_id":"cut"}}`)
	bound.read()
	if f := bound.read(); f["type"] != "thread_bound" {
		t.Fatalf("got %v, want thread_bound", f)
	}

	cctx, ccancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer ccancel()
	began := time.Now()
	err = s.Close(cctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want the context's deadline", err)
	}
	// coder/websocket gives up a close handshake after 5 s by itself.
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("Close took %v: connections were not cut", took)
	}
}
