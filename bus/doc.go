// Package bus is the NATS side of threadbus: the connection to NATS, the
// THREADS stream, publishing client frames, reading a thread's history, and
// the live feeds that deliver a thread's events to local listeners.
//
// # Delivery model
//
// The stream republishes every stored thread.<tid>.out message to
// threadbus.live.<tid> with its stream sequence and the previous sequence of
// the same thread (Nats-Last-Sequence). A Bus keeps one core subscription per
// thread that has a local listener (a feed), shared by all of them; no
// JetStream consumer is created per connection or per binding. A feed delivers
// each event once, in stream order, and repairs a gap on the live path (the
// republish is at-most-once) from the stream before it delivers later events.
// History is read with batched direct gets; what the replica that answered
// lacks (a follower behind its leader) is read from the stream leader (see
// leader.go). A feed whose live path lost events, or whose connection
// came back, resyncs from the stream, retrying until it has caught up; idle
// feeds are checked against the stream every IdleCheckInterval. Replays of
// recent events are answered from the recent window (recent.go): the
// stream's recent events held in memory, fed by one subscription to every
// live subject, and used only for ranges it provably holds completely.
//
// # Concurrency
//
// All methods of Bus are safe for concurrent use. Listener methods are called
// while the feed is locked, from the feed's dispatch goroutine (shared with
// other threads) or from its resync goroutine: they must not block and must
// not call back into the Bus. No feed lock is held across I/O.
//
// # Lifecycle
//
// Open connects, waits while JetStream is unavailable, and creates the
// stream or checks it under the ownership rule (stream.go); Close drains the
// connection and stops the dispatch, resync and check goroutines. StartServer runs an embedded
// nats-server for a single-machine deployment.
package bus
