package bus_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
)

// startCluster starts n embedded servers forming one JetStream cluster on
// loopback, each with its store in a temporary directory.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	routes := make([]string, n)
	for i := range routes {
		routes[i] = "127.0.0.1:" + strconv.Itoa(freePort(t))
	}
	nodes := make([]*server.Server, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ns, err := bus.StartServer(bus.ServerConfig{
				Listen:        "127.0.0.1:0",
				StoreDir:      t.TempDir(),
				ClusterListen: routes[i],
				Routes:        routes,
				ServerName:    fmt.Sprintf("n%d", i),
			})
			if err != nil {
				t.Errorf("StartServer n%d: %v", i, err)
				return
			}
			nodes[i] = ns
		})
	}
	wg.Wait()
	for _, ns := range nodes {
		if ns != nil {
			t.Cleanup(func() {
				ns.Shutdown()
				ns.WaitForShutdown()
			})
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	waitFor(t, "the cluster to elect a JetStream meta leader", func() bool {
		for _, ns := range nodes {
			if ns.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return nodes
}

// freePort returns a TCP port that was free on loopback a moment ago: a
// cluster's servers must know each other's route ports before they start.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// streamFollower returns a server of nodes that holds a replica of THREADS
// but is not its leader, and the leader.
func streamFollower(t *testing.T, js jetstream.JetStream, nodes []*server.Server) (follower, leader *server.Server) {
	t.Helper()
	var info *jetstream.StreamInfo
	waitFor(t, "THREADS to have a leader", func() bool {
		s, err := js.Stream(testCtx(t), subjects.Stream)
		if err != nil {
			return false
		}
		info = s.CachedInfo()
		return info.Cluster != nil && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == 2
	})
	for _, ns := range nodes {
		switch ns.Name() {
		case info.Cluster.Leader:
			leader = ns
		case info.Cluster.Replicas[0].Name:
			follower = ns
		}
	}
	if follower == nil || leader == nil {
		t.Fatalf("no follower or leader among the nodes: %+v", info.Cluster)
	}
	return follower, leader
}

// binder joins a thread's feed and replays its history up to the feed's
// position, as a sidecar binding does: live events wait while the replay
// runs, then those past the last replayed one follow.
type binder struct {
	mu        sync.Mutex
	replaying bool
	pending   []uint64
	got       []uint64
	failed    error
}

func (b *binder) Deliver(ev bus.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.replaying {
		b.pending = append(b.pending, ev.Seq)
		return
	}
	b.addLocked(ev.Seq)
}

func (b *binder) Fail(err error) {
	b.mu.Lock()
	b.failed = err
	b.mu.Unlock()
}

func (b *binder) addLocked(seq uint64) {
	if n := len(b.got); n > 0 && seq <= b.got[n-1] {
		return
	}
	b.got = append(b.got, seq)
}

func (b *binder) bind(ctx context.Context, bs *bus.Bus, tid string) (replayed int, err error) {
	b.replaying = true
	pos, err := bs.Join(ctx, tid, b)
	if err != nil {
		return 0, err
	}
	err = bs.Replay(ctx, tid, bus.Start{}, pos, func(n int) { replayed = n }, func(ev bus.Event) bool {
		b.mu.Lock()
		b.addLocked(ev.Seq)
		b.mu.Unlock()
		return true
	})
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.pending {
		b.addLocked(s)
	}
	b.pending, b.replaying = nil, false
	return replayed, err
}

func (b *binder) snapshot() ([]uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.got), b.failed
}

// TestClusterReadsFromFollower binds listeners, through a Bus attached to a
// follower of an R3 THREADS, while an agent on the leader's server
// publishes: every listener gets every event of its thread, once, in
// order. The follower applies what the leader stores a little later, so a
// replay it answers may end short of a feed position that live events
// (republished by the leader) already moved on; those events must be read
// from the leader, or they are lost.
func TestClusterReadsFromFollower(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	nodes := startCluster(t, 3)
	openBusWith(t, bus.Config{URL: nodes[0].ClientURL(), Replicas: 3})
	_, js0 := connectAgent(t, nodes[0].ClientURL())
	follower, leader := streamFollower(t, js0, nodes)
	b := openBusWith(t, bus.Config{URL: follower.ClientURL()})
	_, js := connectAgent(t, leader.ClientURL())

	const threads, binds, events = 4, 60, 400
	var (
		mu    sync.Mutex
		acked = map[string][]uint64{}
	)
	stop := make(chan struct{})
	published := make(chan error, 1)
	go func() {
		var err error
		defer func() { published <- err }()
		for i := 0; i < events; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tid := fmt.Sprintf("c%d", i%threads)
			subj, _ := subjects.ThreadOut(tid)
			var ack *jetstream.PubAck
			if ack, err = js.Publish(context.Background(), subj, []byte(`{"type":"agent_thinking"}`)); err != nil {
				return
			}
			mu.Lock()
			acked[tid] = append(acked[tid], ack.Sequence)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stop) })

	listeners := make([]*binder, binds)
	for i := range listeners {
		l := &binder{}
		listeners[i] = l
		if _, err := l.bind(testCtx(t), b, fmt.Sprintf("c%d", i%threads)); err != nil {
			t.Fatalf("bind %d: %v", i, err)
		}
	}
	if err := <-published; err != nil {
		t.Fatalf("agent: publish: %v", err)
	}
	for i, l := range listeners {
		tid := fmt.Sprintf("c%d", i%threads)
		mu.Lock()
		want := slices.Clone(acked[tid])
		mu.Unlock()
		last := want[len(want)-1]
		waitFor(t, fmt.Sprintf("listener %d to receive seq %d", i, last), func() bool {
			got, failed := l.snapshot()
			return failed != nil || (len(got) > 0 && got[len(got)-1] >= last)
		})
		got, failed := l.snapshot()
		if failed != nil {
			t.Fatalf("listener %d of %s failed: %v", i, tid, failed)
		}
		if !slices.Equal(got, want) {
			t.Errorf("listener %d of %s: got %d events, want %d; missing %v", i, tid, len(got), len(want), missing(want, got))
		}
	}
}

func missing(want, got []uint64) []uint64 {
	var out []uint64
	for _, s := range want {
		if !slices.Contains(got, s) {
			out = append(out, s)
		}
	}
	return out
}

// openBusWith opens a Bus with cfg (URL set; logs to the test) and closes
// it when the test ends.
func openBusWith(t *testing.T, cfg bus.Config) *bus.Bus {
	t.Helper()
	cfg.Logger = testLogger(t)
	b, err := bus.Open(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// TestReplayFromLaggingReplica: a replica that answers direct gets but
// lacks events (here a mirror with MirrorDirect that holds none of the
// thread's events, standing for a follower behind its leader) answers
// about half the reads. Every replay must still return every event up to
// its feed position, with a count that matches.
func TestReplayFromLaggingReplica(t *testing.T) {
	e := newEnv(t)
	const threads, events = 16, 5
	want := map[string][]uint64{}
	for i := range threads * events {
		tid := fmt.Sprintf("lag%d", i%threads)
		want[tid] = append(want[tid], e.publishEvent(t, tid, []byte(`{"type":"agent_thinking"}`)))
	}
	mirror, err := e.js.CreateStream(testCtx(t), jetstream.StreamConfig{
		Name:         "THREADS_LAGGING",
		Mirror:       &jetstream.StreamSource{Name: subjects.Stream, OptStartSeq: e.lastSeq(t) + 1},
		MirrorDirect: true,
	})
	if err != nil {
		t.Fatalf("create the lagging mirror: %v", err)
	}
	// A mirror answers direct gets once it has received a message.
	e.publishEvent(t, "other", []byte(`{"type":"agent_thinking"}`))
	waitFor(t, "the mirror to receive a message", func() bool {
		info, err := mirror.Info(testCtx(t))
		return err == nil && info.State.Msgs == 1
	})
	// From the stream (the recent window off), and from a window whose
	// warm-up read the lagging replica about half the time.
	direct := openBusWith(t, bus.Config{URL: e.ns.ClientURL()})
	bus.SetDirectReplays(direct, 4)
	warmed := openBusWith(t, bus.Config{URL: e.ns.ClientURL()})
	for _, b := range []*bus.Bus{direct, warmed} {
		replayAll(t, b, want)
	}
}

func replayAll(t *testing.T, b *bus.Bus, want map[string][]uint64) {
	for tid, seqs := range want {
		l := &binder{}
		var replayed int
		var got []uint64
		pos, err := b.Join(testCtx(t), tid, l)
		if err != nil {
			t.Fatalf("Join %s: %v", tid, err)
		}
		err = b.Replay(testCtx(t), tid, bus.Start{}, pos, func(n int) { replayed = n }, func(ev bus.Event) bool {
			got = append(got, ev.Seq)
			return true
		})
		if err != nil {
			t.Fatalf("Replay %s: %v", tid, err)
		}
		var upToPos []uint64
		for _, s := range seqs {
			if s <= pos {
				upToPos = append(upToPos, s)
			}
		}
		if !slices.Equal(got, upToPos) || replayed != len(got) {
			t.Errorf("replay of %s through %d: got %v (count %d), want %v", tid, pos, got, replayed, upToPos)
		}
		t.Logf("%s: position %d, replayed %d", tid, pos, replayed)
		b.Leave(tid, l)
	}
}
