// Package sidecar is the WebSocket side of threadbus: it accepts client
// connections on /ws, binds each to a thread, publishes client frames through
// the bus and delivers each bound thread's events, replayed then live.
//
// # Connections
//
// Each connection has one goroutine reading frames, started once the
// WebSocket is accepted so that net/http's per-connection state is released,
// and a writer goroutine that runs only while frames are queued; the writer
// sends each batch it takes from the queue with one write. Each frame is
// handled on a short-lived goroutine, so the long-lived reader keeps the
// smallest stack. Binding changes
// and the publishing of client frames are serialised per connection, in the
// order the frames arrived, so a frame that names a thread is published only
// after the connection is bound to it. Events reach a connection through its
// bounded send queue; a connection whose queue overflows is closed with
// status 1008 ("slow consumer") and can resume with since.
//
// # Identity and authorization
//
// With a Config.Verifier, every handshake's token is verified before the
// upgrade and a refusal is sent after it (an error frame, then 4401 or
// 4001), because browsers cannot read an HTTP status on a WebSocket. The
// verified user is the Threadbus-User header of everything the connection
// publishes; a timer closes the connection with 4001 when its token
// expires. With a Config.Authorizer, every bind a client causes is asked
// for first, on the connection's bind path (so a denied bind changes
// nothing and its frame is not published); binds the backend requests are
// trusted. threadbus.authz.revoke and conn.<cid>.close reach connections
// through the bus, like conn.<cid>.bind.
//
// # Limits
//
// Admission (admission.go) decides on a handshake before the upgrade:
// connection caps, in all and per client address, and allowed Host names;
// a refusal is an HTTP status. Per-connection limits (limits.go) are
// golang.org/x/time/rate limiters the reader consults for each frame and
// the bind path for each bind a client causes; they are made at first use,
// so an idle connection holds a nil pointer. Liveness (liveness.go) is one
// goroutine that pings a shard of the connections each second; a ping
// holds a goroutine only until its pong. Every refusal is counted in
// threadbus_refused_total by reason.
//
// # Lifecycle
//
// New returns a Server whose Handler serves /ws, /healthz, /readyz and /metrics.
// Close closes every connection with status 1012 (service restart) and waits
// for their goroutines. Server methods are safe for concurrent use.
package sidecar
