package sidecar_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/threadbus/threadbus/sidecar"
)

// nextControl reads frames from the raw client until one with opcode op,
// skipping text frames, and returns its payload.
func (c *rawClient) nextControl(op byte) ([]byte, error) {
	for {
		c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		var h [2]byte
		if _, err := readFull(c.br, h[:]); err != nil {
			return nil, err
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
			return nil, err
		}
		if h[0]&0x0f == op {
			return data, nil
		}
	}
}

// pong answers a ping with its payload, masked as clients must.
func (c *rawClient) pong(payload []byte) {
	c.t.Helper()
	out := []byte{0x8a, 0x80 | byte(len(payload)), 1, 2, 3, 4}
	for i, b := range payload {
		out = append(out, b^[]byte{1, 2, 3, 4}[i%4])
	}
	if _, err := c.nc.Write(out); err != nil {
		c.t.Fatal(err)
	}
}

const opPing = 0x9

var fastPings = sidecar.Limits{PingInterval: 100 * time.Millisecond, PongTimeout: 300 * time.Millisecond}

// TestPingClosesDeadPeer: a peer that answers no ping is closed and its
// binding removed within interval + timeout (plus scheduling slack).
func TestPingClosesDeadPeer(t *testing.T) {
	e := newEnv(t, sidecar.Config{Limits: fastPings})
	c := dialRaw(t, e.http)
	c.read() // connection_established
	if _, err := c.nextControl(opPing); err != nil {
		t.Fatalf("no ping from the server: %v", err)
	}
	start := time.Now()
	eventually(t, "the silent peer to be closed", func() bool {
		return e.metric("threadbus_connections_open") == 0
	})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("closed %v after the ping, want about the 300ms pong timeout", took)
	}
	if got := e.metric(refused("pong_timeout")); got != 1 {
		t.Fatalf("refused pong_timeout = %v, want 1", got)
	}
}

// TestPingKeepsLivePeer: a peer that answers pings stays connected.
func TestPingKeepsLivePeer(t *testing.T) {
	e := newEnv(t, sidecar.Config{Limits: fastPings})
	c := dialRaw(t, e.http)
	c.read()
	for range 5 { // 5 pings: over 1.5 pong timeouts of a peer answering
		p, err := c.nextControl(opPing)
		if err != nil {
			t.Fatalf("ping: %v", err)
		}
		c.pong(p)
	}
	if got := e.metric(refused("pong_timeout")); got != 0 {
		t.Fatalf("a peer answering pings was closed (pong_timeout %v)", got)
	}
	if got := e.metric("threadbus_connections_open"); got != 1 {
		t.Fatalf("connections open = %v, want 1", got)
	}
}
