package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/threadbus/threadbus/subjects"
)

// DefaultRegistryTTL is how long a registry entry outlives the last refresh
// by its sidecar. Entries are refreshed every third of it.
const DefaultRegistryTTL = 60 * time.Second

// registryFlushTimeout bounds waiting for the acks of one batch of writes.
const registryFlushTimeout = 5 * time.Second

// registry writes this sidecar's bindings to the KV bucket. Writes are
// queued and done by one goroutine, in order, off the binding path: a bind
// costs a map update, not a round trip.
//
// Every binding stays in memory as long as it lasts (the refresh rewrites
// them all), so it is kept small: its strings are those of the caller, and
// it is encoded when written, not when queued.
type registry struct {
	b      *Bus
	prefix string // subject prefix of the bucket's keys
	ttl    time.Duration

	mu   sync.Mutex
	own  map[regKey]*Binding // every binding this sidecar holds
	ops  []regOp             // writes not done yet, in order
	wake chan struct{}       // cap 1: there are ops

	done chan struct{}
	wg   sync.WaitGroup
}

// regKey names a registry entry: the bucket's key is <thread>.<connection>.
type regKey struct{ tid, cid string }

type regOp struct {
	key regKey
	bd  *Binding // nil: delete
}

func openRegistry(ctx context.Context, b *Bus, ttl time.Duration, replicas int) (*registry, error) {
	if ttl <= 0 {
		ttl = DefaultRegistryTTL
	}
	if ttl < time.Second {
		return nil, fmt.Errorf("registry ttl %v: the server's minimum is 1s", ttl)
	}
	if replicas <= 0 {
		replicas = 1
	}
	_, err := ensureBucket(ctx, b.js, jetstream.KeyValueConfig{
		Bucket:         BindingsBucket,
		Description:    "threadbus: connections bound to threads, <thread>.<connection>",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
		LimitMarkerTTL: ttl, // expiry markers, so watchers see entries expire
	}, b.log)
	if err != nil {
		return nil, fmt.Errorf("bindings registry: %w", err)
	}
	r := &registry{
		b:      b,
		prefix: "$KV." + BindingsBucket + ".",
		ttl:    ttl,
		own:    make(map[regKey]*Binding),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	r.wg.Go(r.run)
	return r, nil
}

// PutBinding records that a connection is bound to a thread. When it moves
// to another thread, call PutBinding for the new one, then DeleteBinding for
// the old. It never blocks on NATS.
func (b *Bus) PutBinding(bd Binding) error {
	key, err := validKey(bd.ThreadID, bd.ConnectionID)
	if err != nil {
		return err
	}
	b.reg.queue(key, &bd)
	return nil
}

// DeleteBinding removes the registry entry of a connection's binding to a
// thread. It never blocks on NATS.
func (b *Bus) DeleteBinding(tid, cid string) error {
	key, err := validKey(tid, cid)
	if err != nil {
		return err
	}
	b.reg.queue(key, nil)
	return nil
}

func validKey(tid, cid string) (regKey, error) {
	if err := subjects.ValidateThreadID(tid); err != nil {
		return regKey{}, err
	}
	if err := subjects.ValidateConnID(cid); err != nil {
		return regKey{}, err
	}
	return regKey{tid: tid, cid: cid}, nil
}

func (r *registry) queue(key regKey, bd *Binding) {
	r.mu.Lock()
	if bd == nil {
		delete(r.own, key)
	} else {
		r.own[key] = bd
	}
	r.ops = append(r.ops, regOp{key: key, bd: bd})
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *registry) run() {
	refresh := time.NewTicker(r.ttl / 3)
	defer refresh.Stop()
	for {
		select {
		case <-r.wake:
			r.write(r.takeOps())
		case <-refresh.C:
			r.write(r.refreshOps())
		case <-r.done:
			r.write(r.takeOps()) // the deletes of connections closed on shutdown
			return
		}
	}
}

func (r *registry) takeOps() []regOp {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := r.ops
	r.ops = nil
	return ops
}

func (r *registry) refreshOps() []regOp {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := make([]regOp, 0, len(r.own))
	for k, bd := range r.own {
		ops = append(ops, regOp{key: k, bd: bd})
	}
	return ops
}

// write publishes ops asynchronously, in order, then waits for their acks.
// A write that fails is logged; a lost put is redone by the next refresh and
// a lost delete expires with its TTL.
func (r *registry) write(ops []regOp) {
	if len(ops) == 0 {
		return
	}
	acks := make([]jetstream.PubAckFuture, 0, len(ops))
	for _, op := range ops {
		key := bindingKey(op.key.tid, op.key.cid)
		m := nats.NewMsg(r.prefix + key)
		if op.bd == nil {
			// A tombstone with a TTL, so the bucket does not keep one per
			// connection ever seen.
			m.Header.Set("KV-Operation", "DEL")
		} else {
			// The Binding is never changed once queued: PutBinding took a copy.
			m.Data, _ = json.Marshal(op.bd) // plain struct: always marshals
		}
		// A storm of binds queues thousands of writes: wait for room
		// rather than fail after nats.go's default 200 ms stall.
		f, err := r.b.js.PublishMsgAsync(m, jetstream.WithMsgTTL(r.ttl), jetstream.WithStallWait(registryFlushTimeout))
		if err != nil {
			r.b.log.Warn("registry write failed", "key", key, "err", err)
			continue
		}
		acks = append(acks, f)
	}
	timeout := time.NewTimer(registryFlushTimeout)
	defer timeout.Stop()
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			r.b.log.Warn("registry write failed", "subject", f.Msg().Subject, "err", err)
		case <-timeout.C:
			r.b.log.Warn("registry writes not acknowledged in time", "pending", len(acks))
			return
		}
	}
}

// close writes what is queued and stops the writer.
func (r *registry) close() {
	close(r.done)
	r.wg.Wait()
}
