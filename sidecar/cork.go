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

// The WebSocket's buffers, kept for the connection's life. The writer's
// only needs to hold a frame header (at most 14 bytes): a frame's payload
// passes it by, into the cork. The reader's holds the header of a client
// frame and small frames whole; the payload of a larger one is read into
// the message without passing through it. A few more reads per large frame
// cost less than a kilobyte more on every idle connection.
const (
	wsReadBuffer  = 128
	wsWriteBuffer = 16
)

func (w *corkWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := w.ResponseWriter.(http.Hijacker).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.cork.Conn = nc
	// Small buffers of the connection's own: net/http's 4 KiB ones go
	// with its per-connection state once the handler returns.
	br := bufio.NewReaderSize(nc, wsReadBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes net/http read past the request come first. They must be
		// buffered in br when Hijack returns: coder/websocket keeps what
		// br holds and then reads from the returned connection itself.
		pre, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(pre)), nc), max(n, wsReadBuffer))
		if _, err := br.Peek(n); err != nil {
			nc.Close()
			return nil, nil, err
		}
	}
	return w.cork, bufio.NewReadWriter(br, bufio.NewWriterSize(w.cork, wsWriteBuffer)), nil
}
