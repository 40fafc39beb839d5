package bench

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// flooder is LatencyConfig.Flood connections, each on a thread of its own,
// sending client frames as fast as the sidecar takes them and reconnecting
// whenever it closes them (as the per-connection rate limits do): the load
// one hostile client puts beside the measured one.
type flooder struct {
	cancel            context.CancelFunc
	wg                sync.WaitGroup
	sent, conns, shut atomic.Int64 // frames written, connections opened, closed by the sidecar
}

// startFlood starts n flooding connections on t, or none when n is 0.
func startFlood(ctx context.Context, e *env, t *target, n int) *flooder {
	ctx, cancel := context.WithCancel(ctx)
	f := &flooder{cancel: cancel}
	for i := range n {
		tid := e.thread("flood", i)
		url, frame := t.wsURL("thread_id="+tid), clientFrame(0, tid, e.cfg.PayloadBytes)
		f.wg.Go(func() {
			for ctx.Err() == nil {
				ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: e.hc})
				if err != nil {
					if sleep(ctx, 50*time.Millisecond) != nil {
						return
					}
					continue
				}
				f.conns.Add(1)
				f.wg.Go(func() { // discard what the sidecar sends, answer its pings
					for {
						if _, _, err := ws.Read(ctx); err != nil {
							return
						}
					}
				})
				for ctx.Err() == nil {
					if err := ws.Write(ctx, websocket.MessageText, frame); err != nil {
						var ce websocket.CloseError
						if errors.As(err, &ce) || strings.Contains(err.Error(), "closed") {
							f.shut.Add(1)
						}
						break
					}
					f.sent.Add(1)
				}
				ws.CloseNow()
			}
		})
	}
	return f
}

func (f *flooder) stop() {
	f.cancel()
	f.wg.Wait()
}
