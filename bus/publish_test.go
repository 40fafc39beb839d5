package bus_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/subjects"
)

// invalidThreadIDs must never reach a subject: each would address other
// subjects (dots, wildcards), break the protocol line (spaces), or is empty
// or too long.
var invalidThreadIDs = []string{"", "a.b", "*", ">", "a.>", "has space", "tab\t", "new\nline", "é", strings.Repeat("x", 129)}

func TestPublishThreadIn(t *testing.T) {
	e := newEnv(t)
	hdr := nats.Header{}
	hdr.Set("Threadbus-Conn", "c1")
	hdr.Set("Threadbus-Sidecar", "s1")
	data := []byte(`{"type":"user_message","payload":{"content":"hi","thread_id":"t1"}}`)
	seq, err := e.bus.PublishThreadIn(testCtx(t), "t1", hdr, data)
	if err != nil || seq == 0 {
		t.Fatalf("PublishThreadIn = %d, %v", seq, err)
	}
	m, err := e.stream.GetMsg(testCtx(t), seq)
	if err != nil {
		t.Fatalf("get stored frame %d: %v", seq, err)
	}
	if m.Subject != "thread.t1.in" || string(m.Data) != string(data) {
		t.Errorf("stored %s %q, want thread.t1.in %q", m.Subject, m.Data, data)
	}
	if m.Header.Get("Threadbus-Conn") != "c1" || m.Header.Get("Threadbus-Sidecar") != "s1" {
		t.Errorf("stored headers %v", m.Header)
	}
	// A frame of the thread is not one of its events.
	if got := historySeqs(t, e.bus, "t1", 0); len(got) != 0 {
		t.Errorf("History of t1 yields client frames: %v", got)
	}
	seq2, err := e.bus.PublishThreadIn(testCtx(t), "t1", nil, []byte(`{}`))
	if err != nil || seq2 != seq+1 {
		t.Errorf("second PublishThreadIn = %d, %v; want %d", seq2, err, seq+1)
	}
}

func TestPublishConnIn(t *testing.T) {
	e := newEnv(t)
	sub, err := e.agent.SubscribeSync("conn.*.in")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.agent.Flush(); err != nil {
		t.Fatal(err)
	}
	hdr := nats.Header{}
	hdr.Set("Threadbus-Conn", "conn_1")
	data := []byte(`{"type":"start_agent","payload":{"thread_id":null}}`)
	if err := e.bus.PublishConnIn("conn_1", hdr, data); err != nil {
		t.Fatalf("PublishConnIn: %v", err)
	}
	m, err := sub.NextMsg(waitTimeout)
	if err != nil {
		t.Fatalf("agent: no frame on conn.*.in: %v", err)
	}
	if m.Subject != "conn.conn_1.in" || string(m.Data) != string(data) || m.Header.Get("Threadbus-Conn") != "conn_1" {
		t.Errorf("agent got %s %q %v", m.Subject, m.Data, m.Header)
	}
	// Core NATS: nothing is stored.
	if last := e.lastSeq(t); last != 0 {
		t.Errorf("stream last seq %d after a core publish, want 0", last)
	}
}

func TestPublishEvent(t *testing.T) {
	e := newEnv(t)
	data := []byte(`{"type":"agent_started","run_id":"r1"}`)
	seq, err := e.bus.PublishEvent(testCtx(t), "t1", data)
	if err != nil || seq != 1 {
		t.Fatalf("PublishEvent = %d, %v; want 1", seq, err)
	}
	m, err := e.stream.GetMsg(testCtx(t), seq)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "thread.t1.out" || string(m.Data) != string(data) {
		t.Errorf("stored %s %q", m.Subject, m.Data)
	}
	if got := historySeqs(t, e.bus, "t1", 0); len(got) != 1 || got[0] != seq {
		t.Errorf("History = %v, want [%d]", got, seq)
	}
}

// TestPublishInvalidIDs: a bad id is rejected with the sentinel error and
// nothing is published, stored or not.
func TestPublishInvalidIDs(t *testing.T) {
	e := newEnv(t)
	// Everything the bus could publish, wherever it would go.
	sub, err := e.agent.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.agent.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, id := range invalidThreadIDs {
		if seq, err := e.bus.PublishThreadIn(testCtx(t), id, nil, []byte(`{}`)); !errors.Is(err, subjects.ErrInvalidThreadID) {
			t.Errorf("PublishThreadIn(%q) = %d, %v; want ErrInvalidThreadID", id, seq, err)
		}
		if seq, err := e.bus.PublishEvent(testCtx(t), id, []byte(`{}`)); !errors.Is(err, subjects.ErrInvalidThreadID) {
			t.Errorf("PublishEvent(%q) = %d, %v; want ErrInvalidThreadID", id, seq, err)
		}
		if err := e.bus.PublishConnIn(id, nil, []byte(`{}`)); !errors.Is(err, subjects.ErrInvalidConnID) {
			t.Errorf("PublishConnIn(%q) = %v; want ErrInvalidConnID", id, err)
		}
	}
	// A valid core publish after them: when it arrives, anything published
	// before it on the same connection would have arrived first.
	if err := e.bus.PublishConnIn("marker", nil, nil); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := sub.NextMsg(waitTimeout)
		if err != nil {
			t.Fatalf("waiting for the marker: %v", err)
		}
		if m.Subject == "conn.marker.in" {
			break
		}
		if !strings.HasPrefix(m.Subject, "$JS.") && !strings.HasPrefix(m.Subject, "_INBOX.") {
			t.Errorf("published %s %q for an invalid id", m.Subject, m.Data)
		}
	}
	if last := e.lastSeq(t); last != 0 {
		t.Errorf("stream last seq %d, want 0: something invalid was stored", last)
	}
}
