package bus

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/threadbus/threadbus/subjects"
)

// boundsReader coalesces stream-info reads. Every bind that resumes from a
// sequence needs the stream's first and last sequence; a reconnect storm
// would otherwise send one STREAM.INFO request per connection. Callers that
// arrive while a read is in flight share the read that starts after it, so
// no caller gets bounds read before it asked.
type boundsReader struct {
	b    *Bus
	mu   sync.Mutex
	cur  *boundsRead // in flight
	next *boundsRead // starts when cur is done
}

type boundsRead struct {
	done        chan struct{}
	first, last uint64
	err         error
}

// StreamBounds returns the first and last sequence the stream holds, read
// after the call began.
func (b *Bus) StreamBounds(ctx context.Context) (first, last uint64, err error) {
	r, err := b.bounds.join()
	if err != nil {
		return 0, 0, err
	}
	select {
	case <-r.done:
		return r.first, r.last, r.err
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("stream %s info: %w", subjects.Stream, ctx.Err())
	}
}

func (br *boundsReader) join() (*boundsRead, error) {
	br.mu.Lock()
	defer br.mu.Unlock()
	if br.next != nil {
		return br.next, nil
	}
	r := &boundsRead{done: make(chan struct{})}
	if br.cur != nil {
		br.next = r
		return r, nil
	}
	if !br.b.goBackground(func() { br.run(r) }) {
		return nil, ErrClosed
	}
	br.cur = r
	return r, nil
}

// run does the read r and then the ones queued behind it.
func (br *boundsReader) run(r *boundsRead) {
	for r != nil {
		r.first, r.last, r.err = br.read()
		close(r.done)
		br.mu.Lock()
		r, br.next = br.next, nil
		br.cur = r
		br.mu.Unlock()
	}
}

// boundsAttempt bounds one stream-info request. Only the stream leader
// answers; a request sent while replicas elect one is never answered, so
// it is sent again rather than waited for until feedIOTimeout.
const boundsAttempt = time.Second

func (br *boundsReader) read() (first, last uint64, err error) {
	ctx, cancel := context.WithTimeout(br.b.bg, feedIOTimeout)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, boundsAttempt)
		info, err := br.b.stream.Info(actx)
		acancel()
		if err == nil {
			return info.State.FirstSeq, info.State.LastSeq, nil
		}
		if ctx.Err() != nil || !unavailable(err) {
			return 0, 0, fmt.Errorf("stream %s info: %w", subjects.Stream, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // an answer that came at once: no leader yet
		}
	}
}
