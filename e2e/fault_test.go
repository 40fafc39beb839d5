package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The fault harness: real threadbus processes, an agent that publishes
// continuously with acknowledgements (retrying with Nats-Msg-Id, so that a
// retry is stored once), and clients spread over the sidecars that resume
// with since and epoch whenever they are closed. After each scenario every
// client must hold every acknowledged event of its thread exactly once and
// in order; the test logs the longest stall: the longest time between an
// event's acknowledgement (or the client's start, if later) and its
// arrival at the client.
//
// E2E_FAULTS_LONG=1 adds the longer scenarios.

// node is one threadbus process of a fault scenario, restartable with the
// same arguments, ports and data.
type node struct {
	name    string
	cluster string // its embedded server's cluster address, if clustered
	cfg     sidecarConfig
	nats    string // nats://127.0.0.1:port, fixed across restarts
	s       *sidecar
}

// reservePort returns a loopback port that was free a moment ago: the
// processes of a cluster must know each other's ports before they start.
func reservePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startClusterNodes starts n sidecars whose embedded servers form one
// JetStream cluster (R3 THREADS).
func startClusterNodes(t *testing.T, n int) []*node {
	t.Helper()
	routes := make([]string, n)
	nodes := make([]*node, n)
	for i := range nodes {
		routes[i] = "127.0.0.1:" + strconv.Itoa(reservePort(t))
	}
	for i := range nodes {
		port := reservePort(t)
		nodes[i] = &node{
			cluster: routes[i],
			name:    fmt.Sprintf("node%d", i),
			nats:    "nats://127.0.0.1:" + strconv.Itoa(port),
			cfg: sidecarConfig{DataDir: t.TempDir(), Args: []string{
				"--nats-listen", "127.0.0.1:" + strconv.Itoa(port),
				"--nats-cluster-listen", routes[i],
				"--nats-routes", strings.Join(routes, ","),
				"--sidecar-id", fmt.Sprintf("node%d", i),
			}},
		}
	}
	type launched struct {
		ready <-chan [2]string
		start time.Time
	}
	ls := make([]launched, n)
	for i, nd := range nodes {
		nd.s, ls[i].ready, ls[i].start = launchSidecar(t, nd.cfg)
	}
	for i, nd := range nodes {
		nd.s.waitReady(t, ls[i].ready, ls[i].start)
	}
	return nodes
}

func (nd *node) restart(t *testing.T) {
	t.Helper()
	nd.s = startSidecar(t, nd.cfg)
}

// faultAgent publishes events to a few threads, round robin, each acked;
// a publish that fails is retried with the same Nats-Msg-Id until it is.
type faultAgent struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu    sync.Mutex
	acked map[string][]uint64  // thread -> seqs, in order
	at    map[uint64]time.Time // seq -> when its ack came
	fails int                  // publish attempts that failed
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

func startFaultAgent(t *testing.T, urls []string, threads []string, every time.Duration) *faultAgent {
	t.Helper()
	nc, err := nats.Connect(strings.Join(urls, ","),
		nats.Name("threadbus-e2e-fault-agent"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond),
		nats.RetryOnFailedConnect(true),
	)
	if err != nil {
		t.Fatalf("agent: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	a := &faultAgent{nc: nc, js: js, acked: map[string][]uint64{}, at: map[uint64]time.Time{},
		stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { a.finish() })
	go func() {
		defer close(a.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-a.stop:
				return
			case <-tick.C:
			}
			tid := threads[i%len(threads)]
			if !a.publish(tid, i) {
				return
			}
		}
	}()
	return a
}

// publish stores event i on tid, retrying until it is acknowledged or the
// agent stops. It reports whether it was stored.
func (a *faultAgent) publish(tid string, i int) bool {
	body := fmt.Appendf(nil, `{"type":"agent_thinking","i":%d}`, i)
	id := tid + "-" + strconv.Itoa(i)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ack, err := a.js.Publish(ctx, "thread."+tid+".out", body, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			a.mu.Lock()
			if !ack.Duplicate {
				a.acked[tid] = append(a.acked[tid], ack.Sequence)
				a.at[ack.Sequence] = time.Now()
			} else if !slices.Contains(a.acked[tid], ack.Sequence) {
				// Stored by an attempt whose ack was lost.
				a.acked[tid] = append(a.acked[tid], ack.Sequence)
				a.at[ack.Sequence] = time.Now()
			}
			a.mu.Unlock()
			return true
		}
		a.mu.Lock()
		a.fails++
		a.mu.Unlock()
		select {
		case <-a.stop:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// finish stops publishing and returns what was acknowledged.
func (a *faultAgent) finish() (map[string][]uint64, map[uint64]time.Time, int) {
	a.once.Do(func() { close(a.stop) })
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	acked := map[string][]uint64{}
	for tid, seqs := range a.acked {
		acked[tid] = slices.Clone(seqs)
	}
	at := make(map[uint64]time.Time, len(a.at))
	for k, v := range a.at {
		at[k] = v
	}
	return acked, at, a.fails
}

// resumer is a client of one thread that reconnects whenever its
// connection ends, to the next sidecar of its list that answers, resuming
// with since and epoch.
type resumer struct {
	name string
	tid  string
	urls func() []string // ws URLs of the sidecars it may use, first preferred

	mu        sync.Mutex
	got       []uint64
	gotAt     []time.Time
	epoch     string
	resumes   int
	closes    []string
	notRecov  int
	protoErrs []string
	cancel    context.CancelFunc
	done      chan struct{}
	started   time.Time // events acked earlier are due from then on
}

func startResumer(name, tid string, urls func() []string) *resumer {
	ctx, cancel := context.WithCancel(context.Background())
	r := &resumer{name: name, tid: tid, urls: urls, cancel: cancel, done: make(chan struct{}), started: time.Now()}
	go func() {
		defer close(r.done)
		for k := 0; ctx.Err() == nil; k++ {
			list := r.urls()
			r.session(ctx, list[k%len(list)])
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return r
}

func (r *resumer) stop() {
	r.cancel()
	<-r.done
}

// session runs one connection until it ends.
func (r *resumer) session(ctx context.Context, url string) {
	r.mu.Lock()
	q := "thread_id=" + r.tid + "&since=0"
	if n := len(r.got); n > 0 {
		q = "thread_id=" + r.tid + "&since=" + strconv.FormatUint(r.got[n-1], 10) + "&epoch=" + r.epoch
		r.resumes++
	}
	r.mu.Unlock()
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	tr := &http.Transport{}
	ws, _, err := websocket.Dial(dctx, url+"?"+q, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	tr.CloseIdleConnections()
	dcancel()
	if err != nil {
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 20)
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			r.mu.Lock()
			r.closes = append(r.closes, fmt.Sprintf("%v", websocket.CloseStatus(err)))
			r.mu.Unlock()
			return
		}
		var f struct {
			Type    string `json:"type"`
			Seq     uint64 `json:"seq"`
			Payload struct {
				Epoch     string `json:"epoch"`
				Recovered *bool  `json:"recovered"`
				Code      string `json:"code"`
			} `json:"payload"`
		}
		if json.Unmarshal(data, &f) != nil {
			continue
		}
		now := time.Now()
		r.mu.Lock()
		switch {
		case f.Type == "thread_bound":
			r.epoch = f.Payload.Epoch
			if f.Payload.Recovered != nil && !*f.Payload.Recovered {
				r.notRecov++
			}
		case f.Type == "error":
			r.protoErrs = append(r.protoErrs, f.Payload.Code)
			if f.Payload.Code == "bind_failed" {
				// The connection is unbound: resume on a new one.
				r.mu.Unlock()
				return
			}
		case f.Seq > 0:
			r.got = append(r.got, f.Seq)
			r.gotAt = append(r.gotAt, now)
		}
		r.mu.Unlock()
	}
}

func (r *resumer) last() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.got) == 0 {
		return 0
	}
	return r.got[len(r.got)-1]
}

// faultScenario runs clients over the sidecars while fault happens, then
// checks delivery and returns the longest stall.
type faultScenario struct {
	t         *testing.T
	phases    []phase // in time order: the stall of each is reported
	agent     *faultAgent
	resumers  []*resumer
	clientsOn func() []*sidecar // sidecars clients may use now
}

// phase names the part of a scenario from at on: events acknowledged then
// count towards its stall.
type phase struct {
	name string
	at   time.Time
}

func (fs *faultScenario) phase(name string) {
	fs.phases = append(fs.phases, phase{name, time.Now()})
}

// phaseOf returns the index of the phase at belongs to, -1 if before all.
func (fs *faultScenario) phaseOf(at time.Time) int {
	i := -1
	for k, p := range fs.phases {
		if !at.Before(p.at) {
			i = k
		}
	}
	return i
}

func (fs *faultScenario) wsURLs(first int) []string {
	scs := fs.clientsOn()
	var urls []string
	for k := range scs {
		s := scs[(first+k)%len(scs)]
		urls = append(urls, s.wsURL(""))
	}
	return urls
}

func (fs *faultScenario) startClients(threads []string, n int) {
	var rs []*resumer
	for range n {
		k := len(fs.resumers)
		tid := threads[k%len(threads)]
		r := startResumer(fmt.Sprintf("client%d", k), tid, func() []string { return fs.wsURLs(k) })
		fs.resumers = append(fs.resumers, r)
		rs = append(rs, r)
	}
	fs.t.Cleanup(func() {
		for _, r := range rs {
			r.stop()
		}
	})
}

// check stops the agent, waits until every client has the last event of
// its thread, and checks each got every acked event once, in order.
func (fs *faultScenario) check(what string) time.Duration {
	t := fs.t
	t.Helper()
	acked, at, fails := fs.agent.finish()
	deadline := time.Now().Add(60 * time.Second)
	for _, r := range fs.resumers {
		want := acked[r.tid]
		if len(want) == 0 {
			t.Fatalf("%s: nothing acked on %s", what, r.tid)
		}
		for r.last() < want[len(want)-1] && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	var stall time.Duration
	stalls := make([]time.Duration, len(fs.phases))
	total := 0
	for _, r := range fs.resumers {
		r.mu.Lock()
		got, gotAt := slices.Clone(r.got), slices.Clone(r.gotAt)
		resumes, closes, notRecov, perr := r.resumes, slices.Clone(r.closes), r.notRecov, slices.Clone(r.protoErrs)
		r.mu.Unlock()
		want := acked[r.tid]
		if !slices.Equal(got, want) {
			t.Errorf("%s: %s on %s got %d events, want %d (resumed %d times, closes %v, errors %v); first difference at %d: got %v want %v",
				what, r.name, r.tid, len(got), len(want), resumes, closes, perr, firstDiff(got, want), around(got, firstDiff(got, want)), around(want, firstDiff(got, want)))
		}
		if notRecov > 0 {
			t.Errorf("%s: %s was told recovered:false %d times", what, r.name, notRecov)
		}
		var worst time.Duration
		var worstSeq uint64
		for i, s := range got {
			if a, ok := at[s]; ok {
				a = later(a, r.started) // a client that joined late waits from then
				d := gotAt[i].Sub(a)
				if d > worst {
					worst, worstSeq = d, s
				}
				stall = max(stall, d)
				if k := fs.phaseOf(a); k >= 0 {
					stalls[k] = max(stalls[k], d)
				}
			}
		}
		total += len(got)
		if worst > 2*time.Second {
			t.Logf("%s: %s on %s waited %v for seq %d (acked %s); resumed %d times, closes %v, errors %v",
				what, r.name, r.tid, worst.Round(time.Millisecond), worstSeq, at[worstSeq].Format("15:04:05.000"), resumes, closes, perr)
		}
	}
	var acks []time.Time
	for _, a := range at {
		acks = append(acks, a)
	}
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	var pubGap time.Duration
	for i := 1; i < len(acks); i++ {
		pubGap = max(pubGap, acks[i].Sub(acks[i-1]))
	}
	t.Logf("%s: %d clients received %d events; agent publish attempts failed: %d; longest time without an ack: %v; longest stall (ack to delivery): %v",
		what, len(fs.resumers), total, fails, pubGap.Round(time.Millisecond), stall.Round(time.Millisecond))
	fmt.Fprintf(os.Stderr, "e2e: fault publish gap: %s: %v\n", what, pubGap.Round(time.Millisecond))
	for k, p := range fs.phases {
		t.Logf("%s: longest stall of events acked during %q: %v", what, p.name, stalls[k].Round(time.Millisecond))
		fmt.Fprintf(os.Stderr, "e2e: fault stall: %s: %v\n", p.name, stalls[k].Round(time.Millisecond))
	}
	return stall
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func firstDiff(a, b []uint64) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func around(s []uint64, i int) []uint64 {
	return s[max(0, i-2):min(len(s), i+3)]
}

// streamLeader returns the name of the server leading THREADS.
func streamLeader(t *testing.T, js jetstream.JetStream) string {
	t.Helper()
	var leader string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := js.Stream(ctx, streamName)
		cancel()
		if err == nil {
			if c := s.CachedInfo().Cluster; c != nil && c.Leader != "" {
				leader = c.Leader
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if leader == "" {
		t.Fatal("THREADS has no leader")
	}
	return leader
}

// TestFaultCluster: three sidecars whose embedded servers form a JetStream
// cluster (R3). The stream leader's process is killed (-9) and restarted,
// then a follower's: the clients of a killed sidecar resume on another, and
// new clients bind while the others elect a new leader.
func TestFaultCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenario")
	}
	nodes := startClusterNodes(t, 3)
	var urls []string
	for _, nd := range nodes {
		urls = append(urls, nd.nats)
	}
	threads := []string{"fa", "fb", "fc", "fd"}
	agent := startFaultAgent(t, urls, threads, 10*time.Millisecond)
	var mu sync.Mutex
	down := map[*node]bool{}
	fs := &faultScenario{t: t, agent: agent, clientsOn: func() []*sidecar {
		mu.Lock()
		defer mu.Unlock()
		var up []*sidecar
		for _, nd := range nodes {
			if !down[nd] {
				up = append(up, nd.s)
			}
		}
		return up
	}}
	fs.startClients(threads, 12)
	time.Sleep(time.Second)

	leaderName := streamLeader(t, agent.js)
	kill := func(nd *node) {
		mu.Lock()
		down[nd] = true
		mu.Unlock()
		nd.s.kill()
		t.Logf("killed %s (-9)", nd.name)
	}
	revive := func(nd *node) {
		nd.restart(t)
		mu.Lock()
		down[nd] = false
		mu.Unlock()
		t.Logf("restarted %s", nd.name)
	}
	var leader, follower *node
	for _, nd := range nodes {
		// threadbus names a clustered embedded server after its address.
		if leaderName == "threadbus-"+strings.NewReplacer(".", "-", ":", "-").Replace(nd.cluster) {
			leader = nd
		}
	}
	if leader == nil {
		t.Fatalf("leader %s is none of the nodes", leaderName)
	}
	for _, nd := range nodes {
		if nd != leader {
			follower = nd
			break
		}
	}
	fs.phase("steady")
	time.Sleep(time.Second)
	fs.phase("stream leader's node killed (-9)")
	kill(leader)
	// New clients bind (since=0) while the others elect a leader.
	fs.startClients(threads, 4)
	time.Sleep(2 * time.Second)
	fs.phase("leader's node restarting")
	revive(leader)
	time.Sleep(2 * time.Second)
	fs.phase("follower's node killed (-9)")
	kill(follower)
	time.Sleep(2 * time.Second)
	fs.phase("follower's node restarting")
	revive(follower)
	time.Sleep(2 * time.Second)
	fs.check("leader kill -9 and restart, then a follower's")
}

// TestFaultNATSRestart: a sidecar on a single-node NATS server (here the
// embedded server of another threadbus process) that is killed (-9) and
// restarted with its data: the sidecar's clients keep their connections,
// and receive what was stored while NATS was away.
func TestFaultNATSRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenario")
	}
	port := reservePort(t)
	natsNode := &node{name: "nats", nats: "nats://127.0.0.1:" + strconv.Itoa(port),
		cfg: sidecarConfig{DataDir: t.TempDir(), Args: []string{"--nats-listen", "127.0.0.1:" + strconv.Itoa(port)}}}
	natsNode.restart(t)
	sc := startSidecar(t, sidecarConfig{Args: []string{"--nats-url", natsNode.nats}})
	threads := []string{"na", "nb", "nc"}
	agent := startFaultAgent(t, []string{natsNode.nats}, threads, 10*time.Millisecond)
	fs := &faultScenario{t: t, agent: agent, clientsOn: func() []*sidecar { return []*sidecar{sc} }}
	fs.startClients(threads, 6)
	time.Sleep(time.Second)
	fs.phase("steady")
	time.Sleep(time.Second)
	fs.phase("NATS killed (-9) and restarted")
	natsNode.s.kill()
	t.Log("killed the NATS server (-9)")
	time.Sleep(2 * time.Second)
	natsNode.restart(t)
	time.Sleep(2 * time.Second)
	fs.check("single-node NATS kill -9 and restart")
	for _, r := range fs.resumers {
		r.mu.Lock()
		if r.resumes > 0 {
			t.Logf("%s resumed %d times (closes %v)", r.name, r.resumes, r.closes)
		}
		r.mu.Unlock()
	}
}

// longFaults skips the longer scenarios unless E2E_FAULTS_LONG is set.
func longFaults(t *testing.T) {
	t.Helper()
	if os.Getenv("E2E_FAULTS_LONG") == "" {
		t.Skip("long fault scenario: set E2E_FAULTS_LONG=1")
	}
}

// TestFaultLongOutage: NATS stays away longer than the sidecar's outage
// bound (15 s): bound clients are closed with 1013 rather than left
// waiting, their binds fail while NATS is away, and once it is back they
// resume with everything.
func TestFaultLongOutage(t *testing.T) {
	longFaults(t)
	port := reservePort(t)
	natsNode := &node{name: "nats", nats: "nats://127.0.0.1:" + strconv.Itoa(port),
		cfg: sidecarConfig{DataDir: t.TempDir(), Args: []string{"--nats-listen", "127.0.0.1:" + strconv.Itoa(port)}}}
	natsNode.restart(t)
	sc := startSidecar(t, sidecarConfig{Args: []string{"--nats-url", natsNode.nats}})
	threads := []string{"oa", "ob"}
	agent := startFaultAgent(t, []string{natsNode.nats}, threads, 10*time.Millisecond)
	fs := &faultScenario{t: t, agent: agent, clientsOn: func() []*sidecar { return []*sidecar{sc} }}
	fs.startClients(threads, 4)
	time.Sleep(time.Second)
	natsNode.s.kill()
	time.Sleep(18 * time.Second)
	natsNode.restart(t)
	time.Sleep(3 * time.Second)
	fs.check("NATS away for 18 s")
	for _, r := range fs.resumers {
		r.mu.Lock()
		if !slices.Contains(r.closes, "StatusTryAgainLater") {
			t.Errorf("%s was not closed with 1013 during the outage: closes %v", r.name, r.closes)
		}
		r.mu.Unlock()
	}
}

// TestFaultStreamRecreated: THREADS is deleted while clients are bound.
// The sidecar creates it again, closes the clients with 1013, and their
// resumes with the old epoch get recovered:false and the grace replay:
// every event of the new stream reaches them once, in order.
func TestFaultStreamRecreated(t *testing.T) {
	longFaults(t)
	nd := &node{name: "solo", cfg: sidecarConfig{DataDir: t.TempDir()}}
	nd.restart(t)
	threads := []string{"ra", "rb"}
	old := startFaultAgent(t, []string{nd.s.NATSURL}, threads, 10*time.Millisecond)
	fs := &faultScenario{t: t, agent: old, clientsOn: func() []*sidecar { return []*sidecar{nd.s} }}
	fs.startClients(threads, 4)
	time.Sleep(time.Second)
	old.finish()
	if err := old.js.DeleteStream(context.Background(), streamName); err != nil {
		t.Fatalf("delete stream: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := old.js.Stream(context.Background(), streamName); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar did not create THREADS again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	marks := map[*resumer]int{}
	for _, r := range fs.resumers {
		r.mu.Lock()
		marks[r] = len(r.got)
		r.mu.Unlock()
	}
	agent := startFaultAgent(t, []string{nd.s.NATSURL}, threads, 10*time.Millisecond)
	time.Sleep(3 * time.Second)
	acked, _, _ := agent.finish()
	for _, r := range fs.resumers {
		want := acked[r.tid]
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			r.mu.Lock()
			n := len(r.got)
			r.mu.Unlock()
			if n > marks[r] && r.last() == want[len(want)-1] {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		r.mu.Lock()
		got, notRecov, closes := slices.Clone(r.got[marks[r]:]), r.notRecov, slices.Clone(r.closes)
		r.mu.Unlock()
		if !slices.Equal(got, want) {
			t.Errorf("%s on %s after the re-creation: got %v, want %v (closes %v)", r.name, r.tid, got, want, closes)
		}
		if notRecov == 0 {
			t.Errorf("%s was never told recovered:false", r.name)
		}
	}
}
