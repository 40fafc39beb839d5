package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Bounds the hostile suite holds the sidecar to (README "Limits").
const (
	hostileMaxRSS        = 256 << 20 // bytes of resident memory, at any sample
	hostileStoreMaxBytes = 64 << 20  // --store-max-bytes of the suite's sidecar
	hostileAttackTime    = 3 * time.Second
)

// TestHostileClients runs one attack after another against a sidecar with
// the default limits (pings and connection caps scaled down so the suite
// stays short), while an honest client bound to its own thread receives
// every event of a steady publisher and sends a frame every 250 ms. Each
// attack must be refused the way the contract says (error frame or close
// code, and a metric); the honest client must lose nothing and never be
// refused; resident memory and the store stay under their bounds.
func TestHostileClients(t *testing.T) {
	sc := startSidecar(t, sidecarConfig{Args: []string{
		"--ping-interval", "1s", "--pong-timeout", "1s",
		"--max-connections", "60",
		"--max-conns-per-ip", "10", "--trusted-proxies", "127.0.0.1",
		"--store-max-bytes", strconv.Itoa(hostileStoreMaxBytes),
	}})
	ag := newAgent(t, sc.NATSURL)
	rss := watchRSS(t, sc)

	const honestTID = "honest"
	honest := dial(t, sc, "honest", dialOptions{Query: "thread_id=" + honestTID})
	honest.expectBound(honestTID)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the steady publisher
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if _, err := ag.publish(context.Background(), honestTID, ag.event(honestTID, "agent_thinking", 200)); err != nil {
				t.Errorf("publisher: %v", err)
				return
			}
		}
	})
	wg.Go(func() { // the honest client's own frames: a few a second
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			if err := honest.trySend(`{"type":"user_message","payload":{"content":"still here","thread_id":"` + honestTID + `"}}`); err != nil {
				t.Errorf("honest client: %v", err)
				return
			}
		}
	})
	stopHonest := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopHonest()

	t.Run("frame flood", func(t *testing.T) {
		attack(t, sc, "flooder", "thread_id=flood", `{"type":"user_message","payload":{"content":"x"}}`)
		// Each connection stores at most the burst (30) and 20/s, and one
		// address opens at most 50 connections and 5/s.
		secs := uint64(hostileAttackTime / time.Second)
		if n, max := ag.countMsgs(t, "thread.flood.in"), (50+5*secs)*(30+20*secs); n > max {
			t.Errorf("%d flood frames stored in %v, over %d", n, hostileAttackTime, max)
		} else {
			t.Logf("%d flood frames stored in %v (bound %d)", n, hostileAttackTime, max)
		}
		expectMetricAtLeast(t, sc, `threadbus_refused_total{reason="frame_rate"}`, 1)
	})
	t.Run("byte flood", func(t *testing.T) {
		attack(t, sc, "byteflooder", "thread_id=bytes", `{"type":"user_message","payload":{"content":"`+strings.Repeat("x", 60<<10)+`"}}`)
		expectMetricAtLeast(t, sc, `threadbus_refused_total{reason="byte_rate"}`, 1)
	})
	t.Run("switch storm", func(t *testing.T) {
		var frames []string
		for i := range 2000 {
			frames = append(frames, fmt.Sprintf(`{"type":"switch_thread","payload":{"thread_id":"storm_%d"}}`, i))
		}
		attack(t, sc, "switcher", "", frames...)
		expectMetricAtLeast(t, sc, `threadbus_refused_total{reason="bind_rate"}`, 1)
	})
	t.Run("frames that would mislead agents", func(t *testing.T) {
		c := dial(t, sc, "misleader", dialOptions{Query: "thread_id=mine"})
		c.expectBound("mine")
		for _, f := range []string{
			`{"type":"user_message","payload":{"thread_id":"mine","THREAD_ID":"victim"}}`,
			`{"type":"user_message","payload":{"thread_id":"mine","thread_id":"victim"}}`,
			`{"type":"user_message","thread_id":"victim","payload":{"thread_id":"mine"}}`,
			`{"type":"user_message","thread_id":123,"payload":{"thread_id":"mine"}}`,
			`{"type":"user_message","payload":{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}}`,
		} {
			c.send(f)
			if code := c.expectType(typeError).Payload; !strings.Contains(string(code), "invalid_") {
				t.Errorf("frame %.60s: error %s, want invalid_frame or invalid_thread_id", f, code)
			}
		}
		c.sendRaw([]byte("{\"type\":\"user_message\",\"payload\":{\"content\":\"\xc3\x28\"}}"))
		if ce := c.expectClose(waitTimeout); ce.Code != websocket.StatusInvalidFramePayloadData {
			t.Errorf("invalid UTF-8: close %v, want 1007", ce)
		}
		for _, subj := range []string{"thread.mine.in", "thread.victim.in"} {
			if n := ag.countMsgs(t, subj); n != 0 {
				t.Errorf("%d frames stored on %s", n, subj)
			}
		}
		expectMetricAtLeast(t, sc, `threadbus_refused_total{reason="invalid_utf8"}`, 1)
	})
	t.Run("connection flood", func(t *testing.T) {
		var open []*websocket.Conn
		defer func() {
			for _, ws := range open {
				ws.CloseNow()
			}
		}()
		status := func(xff string) int {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			ws, resp, err := websocket.Dial(ctx, sc.wsURL(""), &websocket.DialOptions{HTTPHeader: http.Header{"X-Forwarded-For": {xff}}})
			if err != nil {
				if resp == nil {
					t.Fatalf("dial: %v", err)
				}
				return resp.StatusCode
			}
			open = append(open, ws)
			go func() { // read, so pings are answered, until closed
				for {
					if _, _, err := ws.Read(context.Background()); err != nil {
						return
					}
				}
			}()
			return 0
		}
		// One address, through the trusted proxy: 10, then 503.
		for i := range 11 {
			if got, want := status("203.0.113.7"), map[bool]int{true: 503, false: 0}[i == 10]; got != want {
				t.Fatalf("connection %d from one address: status %d, want %d", i+1, got, want)
			}
		}
		expectMetricAtLeast(t, sc, `threadbus_refused_total{reason="max_conns_ip"}`, 1)
		// Many addresses: refused at --max-connections.
		refused := false
		for i := 0; i < 60 && !refused; i++ {
			refused = status(fmt.Sprintf("198.51.100.%d", i)) == http.StatusServiceUnavailable
		}
		if !refused {
			t.Fatal("61 connections accepted with --max-connections 60")
		}
		expectMetricAtLeast(t, sc, `threadbus_refused_total{reason="max_conns"}`, 1)
	})
	t.Run("dns rebinding", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		_, resp, err := websocket.Dial(ctx, sc.wsURL(""), &websocket.DialOptions{
			Host: "evil.example", HTTPHeader: http.Header{"Origin": {"http://evil.example"}},
		})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("Host and Origin evil.example: %v (%v), want 403", err, resp)
		}
		expectMetricAtLeast(t, sc, `threadbus_refused_total{reason="host"}`, 1)
	})
	t.Run("dead peer", func(t *testing.T) {
		// A peer that stops answering anything, pings included: a raw
		// handshake, then silence.
		nc, err := net.Dial("tcp", sc.HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		fmt.Fprintf(nc, "GET /ws?thread_id=dead HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", sc.HTTPAddr)
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("handshake: %v %v", resp, err)
		}
		start := time.Now()
		waitMetricAtLeast(t, sc, `threadbus_refused_total{reason="pong_timeout"}`, 1, 15*time.Second)
		// Eligible after one interval (1s), pinged within the next (1s),
		// closed after the pong timeout (1s).
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("dead peer closed after %v, want within about 3s", took)
		}
		r := cliOK(t, sc.NATSURL, "bindings", "ls", "--thread", "dead", "--json")
		if strings.Contains(r.Stdout, `"dead"`) {
			t.Errorf("the dead peer's binding is still registered:\n%s", r.Stdout)
		}
	})
	t.Run("client that never reads", func(t *testing.T) {
		c := dial(t, sc, "sloth", dialOptions{Query: "thread_id=sloth", HTTPClient: smallRecvBufClient(4096)})
		c.expectBound("sloth")
		c.pause()
		bodies := make([][]byte, 100)
		for i := range bodies {
			bodies[i] = ag.event("sloth", "agent_thinking", 50<<10)
		}
		if _, err := ag.publishAsync(context.Background(), "sloth", bodies); err != nil { // 5 MiB
			t.Fatal(err)
		}
		c.resume()
		if ce := c.expectClose(waitTimeout); ce.Code != websocket.StatusPolicyViolation || ce.Reason != "slow consumer" {
			t.Errorf("close %v, want 1008 slow consumer", ce)
		}
	})

	stopHonest()
	want := ag.expected(honestTID)
	if err := honest.waitFor(waitTimeout, func(fs []frame, _ error) bool {
		n := 0
		for _, f := range fs {
			if f.isEvent() {
				n++
			}
		}
		return n >= len(want)
	}); err != nil {
		t.Fatalf("honest client: %v", err)
	}
	frames, err := honest.snapshot()
	if err != nil {
		t.Fatalf("honest client was disconnected: %v", err)
	}
	var got []uint64
	for _, f := range frames {
		switch {
		case f.isEvent():
			got = append(got, f.Seq)
		case f.Type == typeError:
			t.Errorf("honest client was refused: %s", f)
		}
	}
	if err := checkRun(want, got, 0); err != nil {
		t.Errorf("honest client: %v", err)
	}
	if n := ag.countMsgs(t, "thread.honest.in"); n == 0 {
		t.Error("none of the honest client's frames was stored")
	}
	if b := streamBytes(t, ag); b > hostileStoreMaxBytes {
		t.Errorf("store holds %d bytes, over --store-max-bytes %d", b, hostileStoreMaxBytes)
	}
	peak := rss()
	if peak > hostileMaxRSS {
		t.Errorf("sidecar RSS peaked at %d MiB, over %d MiB", peak>>20, hostileMaxRSS>>20)
	}
	t.Logf("honest client: %d events, none lost; sidecar RSS peak %d MiB; store %d KiB", len(got), peak>>20, streamBytes(t, ag)>>10)
}

// attackerXFF makes the attackers come from one public address, through the
// suite's trusted proxy (127.0.0.1): loopback itself is exempt from the
// per-address limits.
var attackerXFF = http.Header{"X-Forwarded-For": {"203.0.113.50"}}

// attack floods the sidecar with frames for hostileAttackTime, sending
// them in turn as fast as a connection takes them and reconnecting each
// time the sidecar closes it, which it must do with 1008 "rate limit".
func attack(t *testing.T, sc *sidecar, name, query string, frames ...string) {
	t.Helper()
	deadline := time.Now().Add(hostileAttackTime)
	conns, refusedDials := 0, 0
	for time.Now().Before(deadline) {
		conns++
		c, err := tryDial(t, sc, fmt.Sprintf("%s%d", name, conns), dialOptions{Query: query, Header: attackerXFF})
		if err != nil { // refused: connecting too fast from one address
			if !strings.Contains(err.Error(), "503") {
				t.Fatal(err)
			}
			refusedDials++
			time.Sleep(50 * time.Millisecond) // as an attacker would: retry at once, a little later
			continue
		}
		refused := false
		for i := 0; !refused && time.Now().Before(deadline); i++ {
			refused = c.trySend(frames[i%len(frames)]) != nil
		}
		if refused { // else the attack's time ran out first
			expectRefused(t, c, "rate_limited", websocket.StatusPolicyViolation, "rate limit")
		}
		c.closeNow()
	}
	t.Logf("%s: %d connections in %v, %d handshakes refused", name, conns, hostileAttackTime, refusedDials)
}

// expectRefused checks that the attacker was closed with status and
// reason. The error frames (code) that preceded the close may not reach
// it: closing drops what was queued (sidecar.conn.closeWith); it reports
// how many did.
func expectRefused(t *testing.T, c *client, code string, status websocket.StatusCode, reason string) {
	t.Helper()
	ce := c.expectClose(waitTimeout)
	if ce.Code != status || ce.Reason != reason {
		t.Errorf("%s: close %d %q, want %d %q", c.name, ce.Code, ce.Reason, status, reason)
	}
	frames, _ := c.snapshot()
	n := 0
	for _, f := range frames {
		if f.Type == typeError && strings.Contains(string(f.Payload), `"code":"`+code+`"`) {
			n++
		}
	}
	if n > 0 {
		t.Logf("%s: %d %s error frames read before the close", c.name, n, code)
	}
}

func expectMetricAtLeast(t *testing.T, sc *sidecar, series string, min float64) {
	t.Helper()
	if v := metricValue(t, sc, series); v < min {
		t.Errorf("%s = %v, want at least %v", series, v, min)
	}
}

func waitMetricAtLeast(t *testing.T, sc *sidecar, series string, min float64, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := waitUntil(ctx, func() bool { return metricValue(t, sc, series) >= min }); err != nil {
		t.Fatalf("%s never reached %v: %v", series, min, err)
	}
}

// streamBytes is the size of the THREADS stream.
func streamBytes(t *testing.T, ag *agent) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := ag.stream(t).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Bytes
}

// watchRSS samples the sidecar's resident memory every 100 ms until the
// test ends; the returned function gives the peak so far.
func watchRSS(t *testing.T, sc *sidecar) func() uint64 {
	var mu sync.Mutex
	var peak uint64
	sample := func() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", sc.cmd.Process.Pid))
		if err != nil {
			return // not Linux, or exited
		}
		m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
		if m == nil {
			return
		}
		kb, _ := strconv.ParseUint(string(m[1]), 10, 64)
		mu.Lock()
		peak = max(peak, kb<<10)
		mu.Unlock()
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			sample()
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
	return func() uint64 {
		sample()
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// sendRaw writes bytes as one text frame, valid UTF-8 or not.
func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil && !errors.Is(err, context.Canceled) {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}
