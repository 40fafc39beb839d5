// Package bench is threadbus's load generator: it drives a sidecar running
// in another process with WebSocket and NATS clients in this one, and
// measures each figure next to a baseline taken in the same run.
//
// It owns the scenarios (latency, fan-out, bind storm, inbound), their
// measurement (latency samples and percentiles, the sidecar's RSS and CPU
// time read from /proc or its /metrics), and the report (a table and JSON).
// It also owns starting a sidecar for a run: the threadbus binary's `serve`
// on loopback ports chosen by the OS, a temporary data directory, and an
// embedded nats-server configured with a WebSocket listener, which is the
// fan-out baseline.
//
// # Scenarios
//
//   - Latency: events published with JetStream (waiting for the ack) at a
//     fixed rate, timed until a WebSocket client receives them, next to plain
//     NATS subscribers on threadbus.live.<tid> and thread.<tid>.out.
//   - FanOut: one thread, many WebSocket connections; events delivered per
//     second in total, next to as many nats.go clients connected through
//     nats-server's WebSocket listener and subscribed to thread.<tid>.out.
//   - Storm: many connections, each binding its own thread with stored
//     events at once; the time until every replay is complete, lost events,
//     and the sidecar's RSS per connection, idle and bound.
//   - Inbound: client frames per second stored in JetStream through the
//     sidecar, next to asynchronous JetStream publishing from one client.
//
// # Concurrency and lifecycle
//
// Run runs the scenarios one after another and returns when every goroutine,
// connection and process it started has ended, also on error or when ctx is
// cancelled. A sidecar started by Run gets SIGTERM after its scenario; each
// scenario gets a fresh one, so that no figure carries another's state.
// Scenarios are not safe to run concurrently against one sidecar: they read
// process-wide figures (RSS, CPU time, connection counts).
package bench
