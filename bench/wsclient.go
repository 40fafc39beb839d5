package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// frameHandler receives each text frame connection i reads, in order, on
// the connection's reader goroutine. It must not block, and must not keep
// data, which the next frame overwrites.
type frameHandler func(i int, data []byte)

// wsConn is one bench WebSocket connection to the sidecar's /ws.
type wsConn struct {
	i  int
	ws *websocket.Conn
	id string // from connection_established
}

// fleet is a set of WebSocket connections, each with a goroutine reading
// its frames. close ends them all and waits for the readers.
type fleet struct {
	conns   []*wsConn // nil where the sidecar refused the connection
	readers sync.WaitGroup
	opened  atomic.Int64
	once    sync.Once

	// With dialOptions.keepRefused, the connections the sidecar refused,
	// and the first refusal. Written while opening, read after.
	refused      int
	firstRefusal error
}

// dialOptions are what a fleet's handshakes carry beyond the URL, and what
// a refusal does. The zero value sends no headers and fails on a refusal.
type dialOptions struct {
	// header returns connection i's request headers; nil: none.
	header func(i int) http.Header
	// keepRefused counts a connection the sidecar refuses (an error frame
	// instead of connection_established, as an invalid token gets) in
	// fleet.refused and leaves its slot nil, instead of failing the fleet.
	keepRefused bool
}

// openFleet opens n connections to the URLs url(i), workers at a time, and
// starts reading each as soon as it is open. On error it closes what it
// opened.
func openFleet(ctx context.Context, hc *http.Client, n, workers int, timeout time.Duration, url func(i int) string, opts dialOptions, handle frameHandler, prog *progress, label string) (*fleet, error) {
	f := &fleet{conns: make([]*wsConn, n)}
	stop := prog.start(label, func() string {
		return fmt.Sprintf("%d/%d connections open", f.opened.Load(), n)
	})
	defer stop()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
		refuseMu sync.Mutex
	)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				var h http.Header
				if opts.header != nil {
					h = opts.header(i)
				}
				c, err := dialConn(ctx, hc, url(i), h, timeout)
				if opts.keepRefused && errors.Is(err, ErrRefused) {
					refuseMu.Lock()
					f.refused++
					if f.firstRefusal == nil {
						f.firstRefusal = fmt.Errorf("connection %d of %d: %w", i+1, n, err)
					}
					refuseMu.Unlock()
					continue
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("connection %d of %d: %w", i+1, n, err); cancel() })
					return
				}
				c.i = i
				f.conns[i] = c
				f.opened.Add(1)
				f.readers.Go(func() { f.read(c, handle) })
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		f.close()
		return nil, firstErr
	}
	return f, nil
}

// dialConn opens one connection with the request headers h (nil: none)
// and reads its connection_established frame. An error frame in its place
// (how the sidecar refuses a token, after the upgrade) is an error wrapping
// ErrRefused with the frame's code.
func dialConn(ctx context.Context, hc *http.Client, url string, h http.Header, timeout time.Duration) (*wsConn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient:      hc,
		HTTPHeader:      h,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %s: %w", url, resp.Status, err)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	ws.SetReadLimit(16 << 20)
	_, data, err := ws.Read(ctx)
	if err != nil {
		ws.CloseNow()
		return nil, fmt.Errorf("%s: read connection_established: %w", url, err)
	}
	var est struct {
		Type    string `json:"type"`
		Payload struct {
			ConnectionID string `json:"connection_id"`
		} `json:"payload"`
	}
	if f := parseFrame(data); f.kind == errorFrame {
		ws.CloseNow()
		return nil, fmt.Errorf("%s: %w: %s: %s", url, ErrRefused, f.code, f.message)
	}
	if json.Unmarshal(data, &est) != nil || est.Type != "connection_established" || est.Payload.ConnectionID == "" {
		ws.CloseNow()
		return nil, fmt.Errorf("%s: first frame %.200s, want connection_established", url, data)
	}
	return &wsConn{ws: ws, id: est.Payload.ConnectionID}, nil
}

// read hands every text frame of c to handle until the connection ends.
// The frame buffer is reused: reading allocates nothing per frame.
func (f *fleet) read(c *wsConn, handle frameHandler) {
	buf := make([]byte, 0, 1024)
	for {
		typ, r, err := c.ws.Reader(context.Background()) // close() ends it
		if err != nil {
			return
		}
		if buf, err = readAll(r, buf[:0]); err != nil {
			return
		}
		if typ == websocket.MessageText {
			handle(c.i, buf)
		}
	}
}

// readAll appends all of r to buf.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// write sends one text frame on connection i.
func (f *fleet) write(ctx context.Context, i int, data []byte) error {
	return f.conns[i].ws.Write(ctx, websocket.MessageText, data)
}

// each runs fn for every open connection, workers at a time, and returns
// the first error. Refused connections (nil slots) are skipped.
func (f *fleet) each(ctx context.Context, workers int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	for range min(workers, len(f.conns)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(f.conns) || ctx.Err() != nil {
					return
				}
				if f.conns[i] == nil {
					continue
				}
				if err := fn(ctx, i); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("connection %d: %w", i, err); cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// close cuts every connection (no close handshake: the sidecar sees the
// TCP connection end) and waits for the readers. It is idempotent.
func (f *fleet) close() {
	f.once.Do(func() {
		for _, c := range f.conns {
			if c != nil {
				c.ws.CloseNow()
			}
		}
		f.readers.Wait()
	})
}
