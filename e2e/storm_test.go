package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReconnectStorm: a sidecar restart brings every client back at once.
// 200 clients, each on its own thread whose events are interleaved with all
// the others', reconnect together, each resuming from a different place
// (since=0, the middle of its thread, its last event, or the grace rule),
// while the agent keeps publishing to every thread. Each client must then
// receive exactly its thread's events after its resume point, in order,
// replay and live together, and thread_bound must announce the replayed
// count. Twice: after a restart, where the new sidecar answers from the
// recent events it read at start; and with that window off, where so many
// binds at once go through the shared stream scan (its debug log shows the
// passes; some join a pass under way).
func TestReconnectStorm(t *testing.T) {
	t.Run("from memory after a restart", func(t *testing.T) { reconnectStorm(t, nil, true) })
	t.Run("from stream scans", func(t *testing.T) { reconnectStorm(t, []string{"--replay-cache-bytes", "0"}, false) })
}

func reconnectStorm(t *testing.T, args []string, restart bool) {
	const (
		nClients  = 200
		stored    = 15 // per thread before the storm
		published = 5  // per thread during it
	)
	r := newRand(t)
	cfg := sidecarConfig{DataDir: t.TempDir(), Args: append([]string{"--log-level", "debug", "--replay-grace", "1h"}, args...)}
	sc := startSidecar(t, cfg)
	ag := newAgent(t, sc.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	thread := func(i int) string { return fmt.Sprintf("storm_%03d", i) }

	for range stored {
		for i := range nClients {
			if _, err := ag.publishAsync(ctx, thread(i), [][]byte{ag.event(thread(i), "agent_thinking", 50)}); err != nil {
				t.Fatal(err)
			}
		}
	}

	if restart {
		sc.stop(t)
		sc = startSidecar(t, cfg)
		next := newAgent(t, sc.NATSURL)
		next.seqs, next.bodies = ag.seqs, ag.bodies
		ag = next
	}

	// Where each client resumes, and the run it must receive from there.
	since := make([]*uint64, nClients)
	for i := range nClients {
		seqs := ag.expected(thread(i))
		var s uint64
		switch i % 4 {
		case 0: // everything
		case 1:
			s = seqs[r.IntN(len(seqs))]
		case 2:
			s = seqs[len(seqs)-1]
		case 3: // grace rule: everything stored within the hour
			continue
		}
		since[i] = &s
	}

	clients := make([]*client, nClients)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range nClients {
		wg.Go(func() {
			q := "thread_id=" + thread(i)
			if since[i] != nil {
				q += fmt.Sprintf("&since=%d", *since[i])
			}
			<-start
			c, err := tryDial(t, sc, fmt.Sprintf("client%03d", i), dialOptions{Query: q})
			if err != nil {
				t.Error(err)
				return
			}
			clients[i] = c
		})
	}
	pr := childRand(r)
	wg.Go(func() {
		<-start
		for k := range published {
			for i := range nClients {
				if _, err := ag.publishAsync(ctx, thread(i), [][]byte{ag.event(thread(i), "tool_executing", 50)}); err != nil {
					t.Error(err)
					return
				}
				if (k*nClients+i)%50 == 0 {
					if err := sleepCtx(ctx, time.Duration(pr.IntN(5))*time.Millisecond); err != nil {
						return
					}
				}
			}
		}
	})
	began := time.Now()
	close(start)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	var replayed, live int
	deadline := time.Now().Add(60 * time.Second) // for all clients together
	for i, c := range clients {
		want := ag.expected(thread(i))
		from := 0
		if since[i] != nil {
			from = indexAfter(want, *since[i])
		}
		want = want[from:]
		err := c.waitFor(max(time.Until(deadline), time.Millisecond), func(f []frame, _ error) bool { return len(events(f)) >= len(want) })
		if err == nil {
			err = c.barrier(waitTimeout)
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		frames, _ := c.snapshot()
		segs, orphans, err := segments(frames)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if len(orphans) > 0 || len(segs) != 1 || len(segs[0].Foreign) > 0 {
			t.Errorf("%s: %d events before thread_bound, %d thread_bound frames (want 1), %d foreign events", c.name, len(orphans), len(segs), foreignCount(segs))
			continue
		}
		got := seqsOf(events(frames))
		if err := checkRun(want, got, 0); err != nil || len(got) != len(want) {
			t.Errorf("%s (since %v): %d events, want %d: %v\n got %v\nwant %v", c.name, since[i], len(got), len(want), err, got, want)
			continue
		}
		b := segs[0].Bound
		if b.Replayed > len(got) || !b.Recovered {
			t.Errorf("%s: thread_bound %+v, then %d events", c.name, b, len(got))
		}
		replayed += b.Replayed
		live += len(got) - b.Replayed
	}
	took := time.Since(began)
	passes := sc.logs.grep("replay scan pass")
	joined := 0
	for _, p := range passes {
		if !strings.Contains(p, " replays=1 ") {
			joined++
		}
	}
	hits, misses := metricValue(t, sc, "threadbus_replay_cache_hits_total"), metricValue(t, sc, "threadbus_replay_cache_misses_total")
	if restart {
		// Replays whose feed position is an event still on its way to
		// the window read the stream; the others are answered from memory.
		if hits < nClients/2 {
			t.Errorf("%v replays answered from memory (%v missed), want most of %d", hits, misses, nClients)
		}
	} else {
		if len(passes) == 0 {
			t.Errorf("no scan pass in the sidecar's log: %d binds at once went through per-thread reads only", nClients)
		}
		// The same passes, as operators see them.
		if n := metricValue(t, sc, "threadbus_replay_scan_passes_total"); n < 1 {
			t.Errorf("threadbus_replay_scan_passes_total is %v after the storm, want at least 1", n)
		}
		if hits != 0 {
			t.Errorf("%v replays answered from memory with --replay-cache-bytes 0", hits)
		}
	}
	t.Logf("%d clients resumed at once during publishing: %d events replayed, %d live, all delivered after %v; %v replays from memory, %v from the stream; %d scan passes (%d with more than one replay)",
		nClients, replayed, live, took.Round(time.Millisecond), hits, misses, len(passes), joined)
}

// metricValue reads one unlabelled series from the sidecar's /metrics.
func metricValue(t *testing.T, sc *sidecar, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + sc.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}
