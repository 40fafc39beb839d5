package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const (
	// waitTimeout bounds every wait for a frame in the small scenarios.
	waitTimeout = 15 * time.Second
	// writeTimeout bounds one client write.
	writeTimeout = 10 * time.Second
	// closeTimeout bounds a close handshake in cleanup.
	closeTimeout = 5 * time.Second
)

// client is one WebSocket connection to /ws. A goroutine reads every frame
// into a log as soon as it arrives (unless paused), so a test never blocks
// the server by not reading. next consumes the log in order through a
// cursor; snapshot and waitFor look at all of it. Methods may be called
// from several goroutines, except that next, expect* and the cursor belong
// to one goroutine.
type client struct {
	t    testing.TB
	name string
	ws   *websocket.Conn
	CID  string // from connection_established

	DialStart   time.Time // before the handshake started
	Established time.Time // when connection_established was read

	cancel context.CancelFunc
	done   chan struct{} // closed when the reader goroutine has returned

	mu      sync.Mutex
	frames  []frame
	readErr error         // why reading stopped; nil while reading
	changed chan struct{} // closed and replaced whenever frames or readErr change
	gate    chan struct{} // non-nil while paused; the reader waits for it to close

	cursor int
}

// dialOptions tunes dial. The zero value is a plain client.
type dialOptions struct {
	Query        string
	Subprotocols []string
	// Header is sent with the handshake (e.g. Authorization); a "Host"
	// one replaces the Host.
	Header http.Header
	// HTTPClient dials the connection; by default, a client whose transport
	// belongs to this connection alone.
	HTTPClient *http.Client
}

// dial connects to the sidecar's /ws and reads connection_established.
func dial(t testing.TB, s *sidecar, name string, opts dialOptions) *client {
	t.Helper()
	c, err := tryDial(t, s, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryDial is dial for goroutines other than the test's: it returns errors
// instead of failing the test.
func tryDial(t testing.TB, s *sidecar, name string, opts dialOptions) (*client, error) {
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c := &client{t: t, name: name, changed: make(chan struct{}), done: make(chan struct{})}
	c.DialStart = time.Now()
	ws, resp, err := websocket.Dial(ctx, s.wsURL(opts.Query), &websocket.DialOptions{
		HTTPClient:   hc,
		Subprotocols: opts.Subprotocols,
		HTTPHeader:   opts.Header,
		Host:         opts.Header.Get("Host"),
	})
	if tr, ok := hc.Transport.(*http.Transport); ok {
		// The upgraded connection is hijacked, not pooled: closing idle
		// connections only stops the transport's own goroutines.
		defer tr.CloseIdleConnections()
	}
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		return nil, fmt.Errorf("%s: dial %s: %v %s", name, s.wsURL(opts.Query), err, status)
	}
	ws.SetReadLimit(16 << 20)
	c.ws = ws
	rctx, rcancel := context.WithCancel(context.Background())
	c.cancel = rcancel
	go c.readLoop(rctx)
	t.Cleanup(c.closeNow)

	f, err := c.tryNext(waitTimeout)
	if err != nil {
		return c, fmt.Errorf("%s: waiting for %s: %v", name, typeEstablished, err)
	}
	var p struct {
		ConnectionID string `json:"connection_id"`
	}
	if f.Type != typeEstablished || json.Unmarshal(f.Payload, &p) != nil || p.ConnectionID == "" {
		return c, fmt.Errorf("%s: first frame %s, want {\"type\":%q,\"payload\":{\"connection_id\":...}}", name, f, typeEstablished)
	}
	c.CID = p.ConnectionID
	c.Established = f.At
	return c, nil
}

func (c *client) readLoop(ctx context.Context) {
	defer close(c.done)
	for {
		c.mu.Lock()
		gate := c.gate
		c.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-ctx.Done():
				c.setErr(ctx.Err())
				return
			}
		}
		typ, b, err := c.ws.Read(ctx)
		if err != nil {
			c.setErr(err)
			return
		}
		f := parseFrame(b, typ == websocket.MessageBinary)
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.notifyLocked()
		c.mu.Unlock()
	}
}

func (c *client) setErr(err error) {
	c.mu.Lock()
	c.readErr = err
	c.notifyLocked()
	c.mu.Unlock()
}

func (c *client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// pause stops reading after the frame being read, if any, so the server's
// writes back up. resume reads again.
func (c *client) pause() {
	c.mu.Lock()
	if c.gate == nil {
		c.gate = make(chan struct{})
	}
	c.mu.Unlock()
}

func (c *client) resume() {
	c.mu.Lock()
	if c.gate != nil {
		close(c.gate)
		c.gate = nil
	}
	c.mu.Unlock()
}

// snapshot returns the frames read so far and the read error, if reading stopped.
func (c *client) snapshot() ([]frame, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames[:len(c.frames):len(c.frames)], c.readErr
}

// waitFor waits until cond holds for the frames read so far (and the read
// error, nil while the connection is open) or the timeout passes.
func (c *client) waitFor(timeout time.Duration, cond func(frames []frame, err error) bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		frames, err, changed := c.frames[:len(c.frames):len(c.frames)], c.readErr, c.changed
		c.mu.Unlock()
		if cond(frames, err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: connection ended (%v, close status %d) before the condition held; %d frames read", c.name, err, websocket.CloseStatus(err), len(frames))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return fmt.Errorf("%s: condition not met within %v; %d frames read, last: %s", c.name, timeout, len(frames), lastFrame(frames))
		}
	}
}

func lastFrame(frames []frame) string {
	if len(frames) == 0 {
		return "(none)"
	}
	return frames[len(frames)-1].String()
}

// tryNext returns the frame at the cursor and advances it, waiting up to timeout.
func (c *client) tryNext(timeout time.Duration) (frame, error) {
	i := c.cursor
	err := c.waitFor(timeout, func(frames []frame, _ error) bool { return len(frames) > i })
	if err != nil {
		return frame{}, err
	}
	c.mu.Lock()
	f := c.frames[i]
	c.mu.Unlock()
	c.cursor++
	return f, nil
}

// next is tryNext that fails the test.
func (c *client) next() frame {
	c.t.Helper()
	f, err := c.tryNext(waitTimeout)
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// expectType reads the next frame and fails unless it has type typ.
func (c *client) expectType(typ string) frame {
	c.t.Helper()
	f := c.next()
	if f.Type != typ {
		c.t.Fatalf("%s: frame #%d is %s, want type %q", c.name, c.cursor-1, f, typ)
	}
	return f
}

// expectBound reads the next frame and fails unless it is thread_bound for tid.
func (c *client) expectBound(tid string) bound {
	c.t.Helper()
	f := c.expectType(typeBound)
	b, err := parseBound(f)
	if err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
	if b.ThreadID != tid {
		c.t.Fatalf("%s: thread_bound %s, want thread %q", c.name, f, tid)
	}
	return b
}

// expectError reads the next frame and fails unless it is an error frame with code.
func (c *client) expectError(code string) errorPayload {
	c.t.Helper()
	f := c.expectType(typeError)
	var p errorPayload
	if err := json.Unmarshal(f.Payload, &p); err != nil {
		c.t.Fatalf("%s: error payload: %v in %s", c.name, err, f)
	}
	if p.Code != code || p.Message == "" {
		c.t.Fatalf("%s: error frame %s, want code %q and a message", c.name, f, code)
	}
	return p
}

// expectEvents reads len(seqs) frames and fails unless they are the events
// of tid with exactly these seqs, in this order.
func (c *client) expectEvents(tid string, seqs []uint64) []frame {
	c.t.Helper()
	out := make([]frame, 0, len(seqs))
	for i, want := range seqs {
		f := c.next()
		if !f.isEvent() || f.Seq != want || f.ThreadID != tid {
			c.t.Fatalf("%s: event %d of %d is %s, want an event of thread %q with seq %d", c.name, i+1, len(seqs), f, tid, want)
		}
		out = append(out, f)
	}
	return out
}

// expectQuiet sends a ping and fails unless the next frame is its pong: the
// server had nothing else queued for this connection.
func (c *client) expectQuiet() {
	c.t.Helper()
	ts := time.Now().UnixNano()
	c.send(fmt.Sprintf(`{"type":"ping","timestamp":%d}`, ts))
	f := c.next()
	want := fmt.Sprintf(`{"type":"pong","timestamp":%d}`, ts)
	if !jsonEqual(f.Raw, []byte(want)) {
		c.t.Fatalf("%s: after ping got %s, want %s and nothing before it", c.name, f, want)
	}
}

// expectClose waits for the connection to end and returns the close frame
// the server sent; it fails if the connection ended without one.
func (c *client) expectClose(timeout time.Duration) websocket.CloseError {
	c.t.Helper()
	if err := c.waitFor(timeout, func(_ []frame, err error) bool { return err != nil }); err != nil {
		c.t.Fatalf("%s: not closed: %v", c.name, err)
	}
	_, rerr := c.snapshot()
	var ce websocket.CloseError
	if !errors.As(rerr, &ce) {
		c.t.Fatalf("%s: connection ended with %v, not a close frame", c.name, rerr)
	}
	return ce
}

// barrier sends a ping and waits until its pong arrived: every frame the
// server queued for this connection before it read the ping has then been
// read too, so a check of the log after barrier sees what came before.
func (c *client) barrier(timeout time.Duration) error {
	ts := time.Now().UnixNano()
	want := []byte(fmt.Sprintf(`{"type":"pong","timestamp":%d}`, ts))
	c.mu.Lock()
	from := len(c.frames)
	c.mu.Unlock()
	if err := c.trySend(fmt.Sprintf(`{"type":"ping","timestamp":%d}`, ts)); err != nil {
		return err
	}
	return c.waitFor(timeout, func(frames []frame, _ error) bool {
		for _, f := range frames[from:] {
			if f.Type == typePong && jsonEqual(f.Raw, want) {
				return true
			}
		}
		return false
	})
}

// trySend writes one text frame.
func (c *client) trySend(msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return fmt.Errorf("%s: write %.80s: %w", c.name, msg, err)
	}
	return nil
}

func (c *client) send(msg string) {
	c.t.Helper()
	if err := c.trySend(msg); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) sendBinary(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		c.t.Fatalf("%s: write binary: %v", c.name, err)
	}
}

// close closes the connection with status 1000 and waits for the reader.
func (c *client) close() {
	c.resume()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.ws.Close(websocket.StatusNormalClosure, "")
	}()
	select {
	case <-done:
	case <-time.After(closeTimeout + time.Second):
		_ = c.ws.CloseNow()
		<-done
	}
	c.cancel()
	<-c.done
}

// closeNow drops the connection without a handshake and waits for the reader.
func (c *client) closeNow() {
	c.resume()
	_ = c.ws.CloseNow()
	c.cancel()
	<-c.done
}

// smallRecvBufClient returns an HTTP client whose connections have a receive
// buffer of about bytes, so that a client that stops reading backs up the
// server after little data instead of the several MiB a loopback socket
// buffers by default.
func smallRecvBufClient(bytes int) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, Control: setRecvBuf(bytes)}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}
