package e2e

import (
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Scenario e: reconnecting with since resumes exactly after the last seen
// seq, through the query, through switch_thread, and across a restart of the
// sidecar with the same data directory.
func TestResumeSince(t *testing.T) {
	t.Parallel()
	const tid = "thread_e"
	dataDir := t.TempDir()
	sc := startSidecar(t, sidecarConfig{DataDir: dataDir})
	ag := newAgent(t, sc.NATSURL)

	all := ag.mustPublish(t, tid, 20)
	c1 := dial(t, sc, "first", dialOptions{Query: "thread_id=" + tid})
	b1 := c1.expectBound(tid)
	if b1.Replayed != 20 || !b1.Recovered {
		t.Fatalf("first connection: thread_bound %+v, want replayed 20, recovered", b1)
	}
	c1.expectEvents(tid, all)
	c1.close()
	epoch := b1.Epoch

	all = append(all, ag.mustPublish(t, tid, 10)...)

	// Resume from the middle, from the last event and from before the first.
	for _, k := range []int{15, len(all), 0} {
		var since uint64
		if k > 0 {
			since = all[k-1]
		}
		c := dial(t, sc, fmt.Sprintf("since=%d", since), dialOptions{Query: fmt.Sprintf("thread_id=%s&since=%d&epoch=%s", tid, since, url.QueryEscape(epoch))})
		b := c.expectBound(tid)
		if b.Replayed != len(all)-k || !b.Recovered || b.Epoch != epoch {
			t.Fatalf("resume since=%d: thread_bound %+v, want replayed %d, recovered, epoch %q", since, b, len(all)-k, epoch)
		}
		c.expectEvents(tid, all[k:])
		live := ag.mustPublish(t, tid, 2)
		c.expectEvents(tid, live)
		all = append(all, live...)
		c.expectQuiet()
		c.close()
	}

	// switch_thread with since, on a connection bound elsewhere first.
	c2 := dial(t, sc, "switcher", dialOptions{Query: "thread_id=thread_e_other"})
	c2.expectBound("thread_e_other")
	k := len(all) - 7
	c2.send(fmt.Sprintf(`{"type":"switch_thread","payload":{"thread_id":"%s","since":%d}}`, tid, all[k-1]))
	if b := c2.expectBound(tid); b.Replayed != 7 || !b.Recovered {
		t.Fatalf("switch_thread since=%d: thread_bound %+v, want replayed 7", all[k-1], b)
	}
	c2.expectEvents(tid, all[k:])
	c2.expectQuiet()
	c2.close()

	// An epoch of another incarnation of the stream cannot be trusted.
	c3 := dial(t, sc, "stale-epoch", dialOptions{Query: fmt.Sprintf("thread_id=%s&since=%d&epoch=%s", tid, all[3], url.QueryEscape("not-"+epoch))})
	if b := c3.expectBound(tid); b.Recovered || b.Epoch != epoch {
		t.Fatalf("resume with a foreign epoch: thread_bound %+v, want recovered false and epoch %q", b, epoch)
	}
	c3.close()

	// Across a restart: the client sees 1012, the stream survives.
	c4 := dial(t, sc, "before-restart", dialOptions{Query: fmt.Sprintf("thread_id=%s&since=%d", tid, lastOf(all))})
	c4.expectBound(tid)
	live := ag.mustPublish(t, tid, 3)
	c4.expectEvents(tid, live)
	all = append(all, live...)
	lastSeen := lastOf(all)
	ag.close()
	sc.stop(t)
	if ce := c4.expectClose(waitTimeout); ce.Code != websocket.StatusServiceRestart {
		t.Fatalf("on SIGTERM the client saw close %v, want %d (service restart)", ce, websocket.StatusServiceRestart)
	}

	sc2 := startSidecar(t, sidecarConfig{DataDir: dataDir})
	ag2 := newAgent(t, sc2.NATSURL)
	missed := ag2.mustPublish(t, tid, 10) // while the client was away
	if missed[0] <= lastSeen {
		t.Fatalf("after the restart the stream assigned seq %d, not after %d: the stream did not survive", missed[0], lastSeen)
	}
	c5 := dial(t, sc2, "after-restart", dialOptions{Query: fmt.Sprintf("thread_id=%s&since=%d&epoch=%s", tid, lastSeen, url.QueryEscape(epoch))})
	b5 := c5.expectBound(tid)
	if b5.Replayed != len(missed) || !b5.Recovered || b5.Epoch != epoch {
		t.Fatalf("resume after restart since=%d: thread_bound %+v, want replayed %d, recovered, same epoch %q", lastSeen, b5, len(missed), epoch)
	}
	c5.expectEvents(tid, missed)
	c5.expectEvents(tid, ag2.mustPublish(t, tid, 5))
	c5.expectQuiet()

	// The whole history is still there for a client that asks for it.
	c6 := dial(t, sc2, "everything", dialOptions{Query: "thread_id=" + tid + "&since=0"})
	everything := append(slices.Clone(all), ag2.expected(tid)...)
	if b := c6.expectBound(tid); b.Replayed != len(everything) {
		t.Fatalf("since=0 after restart: thread_bound %+v, want replayed %d", b, len(everything))
	}
	c6.expectEvents(tid, everything)
}

// SIGTERM closes every WebSocket with 1012 (service restart), bound or not,
// and the process exits 0.
func TestSIGTERMClosesWith1012(t *testing.T) {
	t.Parallel()
	sc := startSidecar(t, sidecarConfig{})
	ag := newAgent(t, sc.NATSURL)
	unbound := dial(t, sc, "unbound", dialOptions{})
	boundC := dial(t, sc, "bound", dialOptions{Query: "thread_id=thread_term"})
	boundC.expectBound("thread_term")
	boundC.expectEvents("thread_term", ag.mustPublish(t, "thread_term", 3))
	ag.close()

	start := time.Now()
	sc.stop(t)
	for _, c := range []*client{unbound, boundC} {
		if ce := c.expectClose(waitTimeout); ce.Code != websocket.StatusServiceRestart {
			t.Errorf("%s: closed with %v, want status %d (service restart)", c.name, ce, websocket.StatusServiceRestart)
		}
	}
	t.Logf("SIGTERM to exit: %v", time.Since(start).Round(time.Millisecond))
}
