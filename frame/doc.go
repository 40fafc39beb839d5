// Package frame is the WebSocket wire format of threadbus: it parses the JSON
// frames clients send and builds the frames the sidecar sends back, including
// the event frames that carry a thread's stored events.
//
// Functions here are pure and safe for concurrent use; they never touch the
// network. Errors returned by Parse wrap the sentinels in errors.go, and Code
// maps any of them to the stable code a client sees in an error frame.
package frame
