package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/subjects"
)

// BindingsBucket is the JetStream KV bucket of the bindings registry. One
// key per bound connection, <thread>.<connection>, holds a Binding as JSON.
// Keys carry a per-key TTL that their sidecar refreshes, so the bindings of a
// sidecar that died without cleaning up expire on their own.
const BindingsBucket = "THREADBUS_BINDINGS"

// Binding is one entry of the registry: a connection bound to a thread.
type Binding struct {
	ConnectionID string    `json:"connection_id"`
	ThreadID     string    `json:"thread_id"`
	SidecarID    string    `json:"sidecar_id"`
	User         string    `json:"user,omitempty"`
	RemoteAddr   string    `json:"remote_addr,omitempty"`
	BoundAt      time.Time `json:"bound_at"`
	// ReplayFrom is where the binding's replay began: "after seq N" or
	// "time <RFC3339>".
	ReplayFrom string `json:"replay_from"`
}

func bindingKey(tid, cid string) string { return tid + "." + cid }

// BindingOp is what happened to a binding.
type BindingOp string

const (
	OpBind   BindingOp = "bind"   // a connection was bound to a thread
	OpSwitch BindingOp = "switch" // a bound connection moved to another thread
	OpUnbind BindingOp = "unbind" // the binding ended: closed or unbound
	OpExpire BindingOp = "expire" // the entry expired: its sidecar stopped refreshing it
)

// BindingChange is one change seen by WatchBindings.
type BindingChange struct {
	Op      BindingOp
	Binding Binding
	// From is the previous thread of a switch.
	From string
	Time time.Time
	// Initial is set on the bindings present when the watch began.
	Initial bool
}

func bindingsKV(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, BindingsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w (bucket %s): is a sidecar running on this NATS?", ErrNoRegistry, BindingsBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("bindings registry: %w", err)
	}
	return kv, nil
}

// ListBindings returns the bindings in the registry now, of one thread when
// tid is not empty, sorted by thread then bind time.
func ListBindings(ctx context.Context, js jetstream.JetStream, tid string) ([]Binding, error) {
	filter := ">"
	if tid != "" {
		if err := subjects.ValidateThreadID(tid); err != nil {
			return nil, err
		}
		filter = tid + ".*"
	}
	kv, err := bindingsKV(ctx, js)
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list bindings: %w", err)
	}
	defer w.Stop()
	var out []Binding
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, watchEnded("list bindings", ctx, js)
			}
			if e == nil { // the initial values are done
				sort.Slice(out, func(i, j int) bool {
					if out[i].ThreadID != out[j].ThreadID {
						return out[i].ThreadID < out[j].ThreadID
					}
					return out[i].BoundAt.Before(out[j].BoundAt)
				})
				return out, nil
			}
			if b, ok := decodeBinding(e); ok {
				out = append(out, b)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("list bindings: %w", ctx.Err())
		}
	}
}

// WatchBindings calls fn for every change to the registry from now on (of
// one thread when tid is not empty) until ctx ends or fn returns false. The
// bindings present when it starts are reported first, as OpBind.
func WatchBindings(ctx context.Context, js jetstream.JetStream, tid string, fn func(BindingChange) bool) error {
	filter := ">"
	if tid != "" {
		if err := subjects.ValidateThreadID(tid); err != nil {
			return err
		}
		filter = tid + ".*"
	}
	// nats.go does not always close a watch's updates when its connection
	// closes (about one run in 15 of TestWatchBindingsConnectionClosed hung),
	// so the connection's status is watched too.
	nc := js.Conn()
	closed := nc.StatusChanged(nats.CLOSED)
	defer nc.RemoveStatusListener(closed)
	kv, err := bindingsKV(ctx, js)
	if err != nil {
		return err
	}
	w, err := kv.Watch(ctx, filter)
	if err != nil {
		return fmt.Errorf("watch bindings: %w", err)
	}
	defer w.Stop()
	if nc.IsClosed() { // closed before the listener was in place
		return watchEnded("watch bindings", ctx, js)
	}
	bound := make(map[string]Binding) // by key
	threadOf := make(map[string]string)
	initial := true
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
			if !ok { // nats.go closes it with the subscription
				if ctx.Err() != nil {
					return nil
				}
				return watchEnded("watch bindings", ctx, js)
			}
		case <-closed:
			return watchEnded("watch bindings", ctx, js)
		case <-ctx.Done():
			return nil
		}
		if e == nil {
			initial = false // end of the initial values
			continue
		}
		ch, ok := change(e, bound, threadOf)
		ch.Initial = initial
		if ok && !fn(ch) {
			return nil
		}
	}
}

// change turns a KV entry into a change, tracking what is bound. A switch
// writes the new key before it deletes the old one, so the put reveals it
// and the delete that follows is not reported.
func change(e jetstream.KeyValueEntry, bound map[string]Binding, threadOf map[string]string) (BindingChange, bool) {
	key := e.Key()
	if e.Operation() == jetstream.KeyValuePut {
		b, ok := decodeBinding(e)
		if !ok {
			return BindingChange{}, false
		}
		before, seen := bound[key]
		refresh := seen && before.BoundAt.Equal(b.BoundAt) // same binding, TTL refreshed
		bound[key] = b
		prev, known := threadOf[b.ConnectionID]
		threadOf[b.ConnectionID] = b.ThreadID
		switch {
		case refresh:
			return BindingChange{}, false
		case known && prev != b.ThreadID:
			return BindingChange{Op: OpSwitch, Binding: b, From: prev, Time: e.Created()}, true
		default:
			return BindingChange{Op: OpBind, Binding: b, Time: e.Created()}, true
		}
	}
	b, ok := bound[key]
	if !ok {
		return BindingChange{}, false // a tombstone expiring, or a key never seen bound
	}
	delete(bound, key)
	if threadOf[b.ConnectionID] != b.ThreadID {
		return BindingChange{}, false // the old key of a switch
	}
	delete(threadOf, b.ConnectionID)
	op := OpUnbind
	if e.Operation() == jetstream.KeyValuePurge {
		op = OpExpire // the server's marker for a key whose TTL ran out
	}
	return BindingChange{Op: op, Binding: b, Time: e.Created()}, true
}

func decodeBinding(e jetstream.KeyValueEntry) (Binding, bool) {
	var b Binding
	if err := json.Unmarshal(e.Value(), &b); err != nil || b.ConnectionID == "" || b.ThreadID == "" {
		return Binding{}, false
	}
	if !strings.HasPrefix(e.Key(), b.ThreadID+".") {
		return Binding{}, false
	}
	return b, true
}

// WaitBound waits until thread tid has at least one bound connection on any
// sidecar, and returns one of its bindings. It returns ctx's error if none
// appears in time.
func WaitBound(ctx context.Context, js jetstream.JetStream, tid string) (Binding, error) {
	if err := subjects.ValidateThreadID(tid); err != nil {
		return Binding{}, err
	}
	var found Binding
	err := WatchBindings(ctx, js, tid, func(c BindingChange) bool {
		if c.Op == OpBind || c.Op == OpSwitch {
			found = c.Binding
			return false
		}
		return true
	})
	if err != nil {
		return Binding{}, err
	}
	if found.ConnectionID == "" {
		return Binding{}, fmt.Errorf("wait for a binding of thread %s: %w", tid, ctx.Err())
	}
	return found, nil
}

// watchEnded explains a KV watch whose updates channel closed early.
func watchEnded(op string, ctx context.Context, js jetstream.JetStream) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	if js.Conn().IsClosed() {
		return fmt.Errorf("%s: %w", op, nats.ErrConnectionClosed)
	}
	return fmt.Errorf("%s: watch ended by the server", op)
}
