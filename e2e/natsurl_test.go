package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	// natsConf is the repository's standalone nats-server config.
	natsConf = "../nats.conf"
	// natsConfServerName is the server_name nats.conf sets: seeing it proves
	// a client reached a server that config started.
	natsConfServerName = "threadbus-nats-1"
	// bindingsBucket is the registry's KV bucket.
	bindingsBucket = "THREADBUS_BINDINGS"
)

// startNATS runs the nats.conf server in this process, as an operator would
// run `nats-server -c nats.conf`, changing only what lets it run anywhere:
// a free port and a store in t.TempDir(). It is shut down when the test ends.
func startNATS(t *testing.T) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(natsConf)
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	if !opts.JetStream {
		t.Fatal("nats.conf does not enable JetStream")
	}
	opts.Port = server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server from nats.conf: %v", err)
	}
	ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server from nats.conf not ready for connections after 10s")
	}
	if !ns.JetStreamEnabled() {
		t.Fatal("nats-server from nats.conf runs without JetStream")
	}
	return ns
}

// checkNoEmbeddedServer fails if the sidecar started a NATS server of its
// own instead of using url.
func checkNoEmbeddedServer(t *testing.T, sc *sidecar, url string) {
	t.Helper()
	if sc.NATSURL != url {
		t.Errorf("%s: ready line says nats=%s, want the --nats-url %s", sc.name, sc.NATSURL, url)
	}
	if lines := sc.logs.grep("embedded nats-server"); len(lines) > 0 {
		t.Errorf("%s: started an embedded server although --nats-url was given:\n%s", sc.name, strings.Join(lines, "\n"))
	}
	if _, err := os.Stat(filepath.Join(sc.DataDir, "jetstream")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: its --data-dir holds a JetStream store (stat: %v): it ran a server of its own", sc.name, err)
	}
}

// registryEntry reads the bindings bucket's entry for a connection bound to
// tid, waiting for it to appear (registry writes are asynchronous).
func registryEntry(t *testing.T, ag *agent, tid, cid string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	kv, err := ag.js.KeyValue(ctx, bindingsBucket)
	if err != nil {
		t.Fatalf("bucket %s: %v", bindingsBucket, err)
	}
	var entry jetstream.KeyValueEntry
	var getErr error
	if err := waitUntil(ctx, func() bool {
		entry, getErr = kv.Get(ctx, tid+"."+cid)
		return getErr == nil
	}); err != nil {
		t.Fatalf("no registry entry %s.%s within %v: last Get: %v", tid, cid, waitTimeout, getErr)
	}
	var v map[string]any
	if err := json.Unmarshal(entry.Value(), &v); err != nil {
		t.Fatalf("registry entry %s.%s is not JSON: %s", tid, cid, entry.Value())
	}
	return v
}

// The nats.conf at the top of the repository runs a standalone server that
// a sidecar joins with --nats-url: the sidecar starts no server of its own,
// creates the stream and the registry bucket there, delivers an agent's
// events, and leaves the server running when it stops.
func TestNATSURLStandalone(t *testing.T) {
	t.Parallel()
	const tid, sidecarID = "thread_url", "e2e-url"
	ns := startNATS(t)
	url := ns.ClientURL()
	sc := startSidecar(t, sidecarConfig{Args: []string{"--nats-url", url, "--sidecar-id", sidecarID}})
	checkNoEmbeddedServer(t, sc, url)

	ag := newAgent(t, url)
	if got := ag.nc.ConnectedServerName(); got != natsConfServerName {
		t.Errorf("agent connected to server %q, want nats.conf's %q", got, natsConfServerName)
	}
	before := ag.mustPublish(t, tid, 3)
	c := dial(t, sc, "client", dialOptions{Query: "thread_id=" + tid})
	if b := c.expectBound(tid); b.Replayed != len(before) {
		t.Errorf("thread_bound %+v, want %d replayed", b, len(before))
	}
	c.expectEvents(tid, before)
	c.expectEvents(tid, ag.mustPublish(t, tid, 5))
	c.expectQuiet()

	// The stream and the bucket live on the given server.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	info, err := ag.stream(t).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs < 8 {
		t.Errorf("stream %s on the given server holds %d messages, want the 8 events at least", streamName, info.State.Msgs)
	}
	if _, err := ag.js.KeyValue(ctx, bindingsBucket); err != nil {
		t.Fatalf("bucket %s on the given server: %v", bindingsBucket, err)
	}
	if e := registryEntry(t, ag, tid, c.CID); e["sidecar_id"] != sidecarID || e["connection_id"] != c.CID {
		t.Errorf("registry entry %v, want connection %s on sidecar %s", e, c.CID, sidecarID)
	}

	// SIGTERM stops the sidecar, not the server it joined; the bindings of
	// the connections it closed are gone from the registry.
	sc.stop(t)
	if !ns.Running() {
		t.Fatal("the NATS server stopped with the sidecar")
	}
	kv, err := ag.js.KeyValue(ctx, bindingsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, tid+"."+c.CID); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("registry entry of a connection closed at shutdown: Get = %v, want ErrKeyNotFound", err)
	}
	if _, err := ag.publish(ctx, tid, ag.event(tid, "agent_completed", 0)); err != nil {
		t.Errorf("agent publish after the sidecar stopped: %v", err)
	}
}

// Two sidecars share one NATS server: clients bound to the same thread on
// either receive every event, and a conn.<cid>.bind request is answered by
// the sidecar that holds the connection, and by no other.
func TestTwoSidecarsOneNATS(t *testing.T) {
	t.Parallel()
	const tid, tid2 = "thread_two", "thread_two_b"
	ns := startNATS(t)
	url := ns.ClientURL()
	sc1 := startSidecar(t, sidecarConfig{Args: []string{"--nats-url", url, "--sidecar-id", "e2e-n1"}})
	sc2 := startSidecar(t, sidecarConfig{Args: []string{"--nats-url", url, "--sidecar-id", "e2e-n2"}})
	checkNoEmbeddedServer(t, sc1, url)
	checkNoEmbeddedServer(t, sc2, url)
	ag := newAgent(t, url)

	before := ag.mustPublish(t, tid, 4)
	c1 := dial(t, sc1, "client1@sc1", dialOptions{Query: "thread_id=" + tid})
	c2 := dial(t, sc2, "client2@sc2", dialOptions{})
	c1.expectBound(tid)
	c2.send(`{"type":"user_message","payload":{"content":"hi","references":[],"thread_id":"` + tid + `"}}`)
	c2.expectBound(tid)
	// Replay, then live, on both: every event, in order, once.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	bodies := make([][]byte, 40)
	for i := range bodies {
		bodies[i] = ag.event(tid, "agent_thinking", 0)
	}
	live, err := ag.publishAsync(ctx, tid, bodies)
	if err != nil {
		t.Fatal(err)
	}
	all := append(append([]uint64(nil), before...), live...)
	c1.expectEvents(tid, all)
	c2.expectEvents(tid, all)
	c1.expectQuiet()
	c2.expectQuiet()

	// The registry holds both, each with its own sidecar.
	if e := registryEntry(t, ag, tid, c1.CID); e["sidecar_id"] != "e2e-n1" {
		t.Errorf("registry entry of client1: %v, want sidecar e2e-n1", e)
	}
	if e := registryEntry(t, ag, tid, c2.CID); e["sidecar_id"] != "e2e-n2" {
		t.Errorf("registry entry of client2: %v, want sidecar e2e-n2", e)
	}

	// The backend binds a connection of sidecar 2.
	c3 := dial(t, sc2, "client3@sc2", dialOptions{})
	subj := "conn." + c3.CID + ".bind"
	// The sidecar's SUB reaches the server asynchronously to the client's
	// connection_established: wait for it to be there.
	var subs *server.Subsz
	if err := waitUntil(ctx, func() bool {
		if subs, err = ns.Subsz(&server.SubszOptions{Subscriptions: true, Test: subj}); err != nil {
			t.Fatal(err)
		}
		return subs.Total > 0
	}); err != nil {
		t.Fatalf("no subscription matches %s: %v", subj, err)
	}
	if subs.Total != 1 {
		t.Errorf("%d subscriptions match %s, want 1: only the sidecar holding the connection may answer; %+v", subs.Total, subj, subs.Subs)
	}
	seqs2 := ag.mustPublish(t, tid2, 3)
	r, raw := requestBind(t, ag, c3.CID, `{"thread_id":"`+tid2+`"}`)
	if !r.OK || r.ThreadID != tid2 || r.Replayed != len(seqs2) {
		t.Fatalf("bind reply %s, want ok, thread %s, %d replayed", raw, tid2, len(seqs2))
	}
	c3.expectBound(tid2)
	c3.expectEvents(tid2, seqs2)
	if lines := sc2.logs.grep("thread bound", c3.CID, "via=backend"); len(lines) != 1 {
		t.Errorf("sidecar 2 logged %d backend binds of %s, want 1", len(lines), c3.CID)
	}
	if lines := sc1.logs.grep(c3.CID); len(lines) > 0 {
		t.Errorf("sidecar 1 handled connection %s of sidecar 2:\n%s", c3.CID, strings.Join(lines, "\n"))
	}
	if e := registryEntry(t, ag, tid2, c3.CID); e["sidecar_id"] != "e2e-n2" {
		t.Errorf("registry entry of client3: %v, want sidecar e2e-n2", e)
	}
	// A connection neither sidecar holds has no responder.
	rctx, rcancel := context.WithTimeout(context.Background(), waitTimeout)
	defer rcancel()
	if _, err := ag.nc.RequestWithContext(rctx, "conn.nosuchconn.bind", []byte(`{"thread_id":"`+tid+`"}`)); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("bind request for an unknown connection: %v, want no responders", err)
	}

	// Events of one thread still reach both sidecars' clients after that.
	more := ag.mustPublish(t, tid, 3)
	c1.expectEvents(tid, more)
	c2.expectEvents(tid, more)
	c3.expectQuiet()
}

// --nats-config feeds a nats-server config to the embedded server: the
// sidecar starts it with the file's settings (name, port, store) and serves.
func TestNATSConfig(t *testing.T) {
	t.Parallel()
	const tid = "thread_conf"
	src, err := os.ReadFile(natsConf)
	if err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	conf := string(src)
	for _, r := range [][2]string{
		{"\nport: 4222\n", "\nport: -1\n"},
		{`store_dir: "./nats-data"`, fmt.Sprintf("store_dir: %q", store)},
	} {
		if !strings.Contains(conf, r[0]) {
			t.Fatalf("nats.conf no longer contains %q; update this test", r[0])
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	sc := startSidecar(t, sidecarConfig{Args: []string{"--nats-config", path}})
	if strings.HasSuffix(sc.NATSURL, ":4222") || strings.HasSuffix(sc.NATSURL, ":0") {
		t.Fatalf("ready line nats=%s: the config's port -1 should give a free port", sc.NATSURL)
	}
	ag := newAgent(t, sc.NATSURL)
	if got := ag.nc.ConnectedServerName(); got != natsConfServerName {
		t.Errorf("the embedded server is named %q, want the config's %q", got, natsConfServerName)
	}
	if got := ag.nc.MaxPayload(); got != 1<<20 {
		t.Errorf("the embedded server's max payload is %d, want the config's 1MB", got)
	}
	c := dial(t, sc, "client", dialOptions{Query: "thread_id=" + tid})
	c.expectBound(tid)
	c.expectEvents(tid, ag.mustPublish(t, tid, 5))
	c.expectQuiet()

	// JetStream stores where the config says, not under --data-dir.
	if entries, err := os.ReadDir(store); err != nil || len(entries) == 0 {
		t.Errorf("the config's store_dir %s is empty (%v): JetStream stored elsewhere", store, err)
	}
	if _, err := os.Stat(filepath.Join(sc.DataDir, "jetstream")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--data-dir holds a JetStream store (stat: %v) although the config sets store_dir", err)
	}
	sc.stop(t)
}

// A backend told a connection id may bind it at once: every conn.<cid>.bind
// sent right after the client read connection_established is answered.
func TestBindRightAfterEstablished(t *testing.T) {
	t.Parallel()
	const tid = "thread_now"
	ns := startNATS(t)
	sc := startSidecar(t, sidecarConfig{Args: []string{"--nats-url", ns.ClientURL()}})
	ag := newAgent(t, ns.ClientURL())
	failed := 0
	for i := range 50 {
		c := dial(t, sc, fmt.Sprintf("client%d", i), dialOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		m, err := ag.nc.RequestWithContext(ctx, "conn."+c.CID+".bind", []byte(`{"thread_id":"`+tid+`"}`))
		cancel()
		var r bindReply
		switch {
		case err != nil:
			failed++
			t.Logf("%s: bind request right after connection_established: %v", c.name, err)
		case json.Unmarshal(m.Data, &r) != nil || !r.OK:
			t.Fatalf("%s: bind reply %s", c.name, m.Data)
		default:
			c.expectBound(tid)
		}
		c.closeNow()
	}
	if failed > 0 {
		t.Fatalf("%d of 50 bind requests sent right after connection_established were not answered", failed)
	}
}
