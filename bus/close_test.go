package bus_test

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/threadbus/threadbus/bus"
)

// TestClose: Close is idempotent, a closed Bus refuses work, and nothing the
// Bus or the embedded server started outlives them.
func TestClose(t *testing.T) {
	// Goroutines of earlier tests are gone (goleak retries while they end);
	// only this test's count.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	ns, err := bus.StartServer(bus.ServerConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	b, err := bus.Open(t.Context(), bus.Config{URL: ns.ClientURL(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Leave work behind: feeds with listeners, a live event on its way.
	var r1, r2 recorder
	if _, err := b.Join(t.Context(), "a", &r1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Join(t.Context(), "b", &r2); err != nil {
		t.Fatal(err)
	}
	seq, err := b.PublishEvent(t.Context(), "a", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	r1.waitSeq(t, "r1", seq)
	if _, err := b.PublishEvent(t.Context(), "b", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	if err := b.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Close(t.Context()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if !b.Conn().IsClosed() {
		t.Error("the NATS connection is still open after Close")
	}
	var r3 recorder
	if _, err := b.Join(t.Context(), "c", &r3); err == nil {
		t.Error("Join after Close: no error")
	}
	b.Leave("a", &r1) // harmless after Close
	if _, err := b.PublishEvent(t.Context(), "a", []byte(`{}`)); err == nil {
		t.Error("PublishEvent after Close: no error")
	}
	if err := b.History(t.Context(), "a", bus.Start{}, func(bus.Event, uint64) bool { return true }); err == nil {
		t.Error("History after Close: no error")
	}
}

// TestCloseCancelled: a Close whose context has ended still closes the
// connection and stops the dispatchers, and says the drain was cut short.
func TestCloseCancelled(t *testing.T) {
	e := newEnv(t)
	b, err := bus.Open(testCtx(t), bus.Config{URL: e.ns.ClientURL(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var r recorder
	if _, err := b.Join(testCtx(t), "t", &r); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = b.Close(ctx)
	if !b.Conn().IsClosed() {
		t.Fatal("the NATS connection is still open after Close")
	}
	// Drain may have finished before the cancelled context was looked at:
	// either answer is right, but a later Close repeats it.
	if err2 := b.Close(context.Background()); err2 != err {
		t.Errorf("second Close = %v, first %v", err2, err)
	}
}
