package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Scenario h: a client that stops reading overflows its send queue and is
// closed with 1008 "slow consumer" once it reads again; the fast client on the
// same thread receives every event; the slow one resumes with since.
func TestSlowClientDisconnected(t *testing.T) {
	const (
		tid       = "thread_h"
		n         = 2000
		eventSize = 4096
		queue     = 65536
	)
	sc := startSidecar(t, sidecarConfig{Args: []string{"--send-queue-bytes", fmt.Sprint(queue)}})
	ag := newAgent(t, sc.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// A small receive buffer, so the server backs up after little more
	// than the queue instead of after the MiBs loopback sockets buffer.
	slow := dial(t, sc, "slow", dialOptions{Query: "thread_id=" + tid, HTTPClient: smallRecvBufClient(8192)})
	slow.expectBound(tid)
	fast := dial(t, sc, "fast", dialOptions{Query: "thread_id=" + tid})
	fast.expectBound(tid)
	slow.pause()

	// Publish in chunks of half the queue and let the fast client take each
	// chunk before the next: its queue can then never overflow, however
	// slowly this machine runs the sidecar, while the slow client's queue
	// fills. If delivery to the slow client held up the thread's other
	// connections, the fast client would stall here.
	body := ag.event(tid, "tool_completed", eventSize-200)
	chunk := queue / 2 / len(body)
	start := time.Now()
	var seqs []uint64
	for len(seqs) < n {
		for range min(chunk, n-len(seqs)) {
			seq, err := ag.publish(ctx, tid, body)
			if err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, seq)
		}
		want := len(seqs)
		if err := fast.waitFor(waitTimeout, func(f []frame, _ error) bool { return countEvents(f) >= want }); err != nil {
			t.Fatalf("fast client, after %d events published: %v", want, err)
		}
	}
	t.Logf("published %d events of %d bytes in chunks of %d; the fast client had them all after %v", n, len(body), chunk, time.Since(start).Round(time.Millisecond))

	if err := fast.barrier(waitTimeout); err != nil {
		t.Fatal(err)
	}
	frames, rerr := fast.snapshot()
	if rerr != nil {
		t.Fatalf("fast client disconnected: %v", rerr)
	}
	if got := seqsOf(events(frames)); !slices.Equal(got, seqs) {
		t.Fatalf("fast client received %d events, want exactly the %d published: %v", len(got), n, checkRun(seqs, got, 0))
	}

	// The slow client reads again: what was written before the overflow,
	// then the close.
	slow.resume()
	ce := slow.expectClose(35 * time.Second)
	if ce.Code != websocket.StatusPolicyViolation || ce.Reason != "slow consumer" {
		t.Fatalf("slow client closed with %v, want status %d reason %q", ce, websocket.StatusPolicyViolation, "slow consumer")
	}
	frames, _ = slow.snapshot()
	got := seqsOf(events(frames))
	if err := checkRun(seqs, got, 0); err != nil {
		t.Fatalf("slow client's events before the close: %v", err)
	}
	if len(got) == n {
		t.Fatalf("slow client received all %d events: the test did not overflow the send queue (make the events bigger or more)", n)
	}
	t.Logf("slow client received %d of %d events, then close %d %q", len(got), n, ce.Code, ce.Reason)

	// It resumes where it stopped and catches up, through a replay far
	// bigger than its send queue.
	since := lastOf(got)
	again := dial(t, sc, "slow-again", dialOptions{Query: fmt.Sprintf("thread_id=%s&since=%d", tid, since)})
	b := again.expectBound(tid)
	if b.Replayed != n-len(got) || !b.Recovered {
		t.Fatalf("resume since=%d: thread_bound %+v, want replayed %d", since, b, n-len(got))
	}
	if err := again.waitFor(60*time.Second, func(f []frame, _ error) bool { return len(events(f)) >= n-len(got) }); err != nil {
		t.Fatalf("resume since=%d after a slow-consumer close: %v", since, err)
	}
	if err := again.barrier(waitTimeout); err != nil {
		t.Fatal(err)
	}
	frames, rerr = again.snapshot()
	if rerr != nil {
		t.Fatalf("resumed client disconnected: %v", rerr)
	}
	if rest := seqsOf(events(frames)); !slices.Equal(rest, seqs[len(got):]) {
		t.Fatalf("resumed client: %v", checkRun(seqs, rest, len(got)))
	}
}
