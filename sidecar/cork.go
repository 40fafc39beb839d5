package sidecar

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// corkConn is the hijacked TCP connection of a WebSocket. While corked,
// what the WebSocket writes collects in memory; uncork writes it to the
// socket with one syscall. The writer corks around each batch it takes
// from the send queue, so a batch of N frames costs one write, not N.
type corkConn struct {
	net.Conn
	mu     sync.Mutex // held across the socket write of uncork: keeps order
	corked bool
	buf    *bytes.Buffer // from corkPool while corked
}

var corkPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked {
		return c.buf.Write(p)
	}
	return c.Conn.Write(p)
}

func (c *corkConn) cork() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = true
	c.buf = corkPool.Get().(*bytes.Buffer)
}

// uncork writes what was collected, within timeout.
func (c *corkConn) uncork(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	buf := c.buf
	c.buf = nil
	var err error
	if buf.Len() > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(timeout))
		_, err = c.Conn.Write(buf.Bytes())
		_ = c.Conn.SetWriteDeadline(time.Time{})
	}
	if buf.Cap() <= 64<<10 {
		buf.Reset()
		corkPool.Put(buf)
	}
	return err
}

// corkWriter hands websocket.Accept a hijacked connection wrapped in a
// corkConn, with small buffers of its own instead of net/http's 4 KiB ones.
type corkWriter struct {
	http.ResponseWriter
	cork *corkConn
}

// The WebSocket's buffers. Frames pass through the writer's into the cork,
// so it only needs to hold a frame header; reads of client frames larger
// than the reader's bypass it.
const (
	wsReadBuffer  = 1 << 10
	wsWriteBuffer = 512
)

func (w *corkWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := w.ResponseWriter.(http.Hijacker).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.cork.Conn = nc
	// Small buffers of the connection's own: net/http's 4 KiB ones go
	// with its per-connection state once the handler returns. Bytes it
	// already read past the request stay first.
	var r io.Reader = nc
	if n := brw.Reader.Buffered(); n > 0 {
		pre, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(pre)), nc)
	}
	return w.cork, bufio.NewReadWriter(bufio.NewReaderSize(r, wsReadBuffer), bufio.NewWriterSize(w.cork, wsWriteBuffer)), nil
}
