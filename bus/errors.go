package bus

import "errors"

var (
	// ErrNoAuth is an embedded server listening beyond loopback without
	// authentication: anyone reaching the port could read every thread.
	ErrNoAuth = errors.New("NATS reachable beyond loopback requires authentication (a token, a user and password, or an authorization block in the config file)")
	// ErrClosed is returned by calls on a closed Bus.
	ErrClosed = errors.New("bus closed")
	// ErrGapUnrepaired is passed to Listener.Fail when the live path lost an
	// event that could not be read back from the stream.
	ErrGapUnrepaired = errors.New("live gap could not be repaired from the stream")
	// ErrUnavailable is passed to Listener.Fail when NATS or the stream
	// could not be read for too long to keep the feed's promise.
	ErrUnavailable = errors.New("stream unavailable")
	// ErrStreamChanged is passed to Listener.Fail when THREADS was
	// re-created: sequences of the old epoch mean nothing in the new one.
	ErrStreamChanged = errors.New("stream re-created")
	// ErrBadLiveMessage is logged when a live message lacks the republish headers.
	ErrBadLiveMessage = errors.New("live message without republish headers")
	// ErrStreamConflict is returned by Open when an existing stream
	// contradicts what threadbus needs (see the ownership rule in stream.go).
	ErrStreamConflict = errors.New("stream configuration conflicts with threadbus")
)

// ErrNoRegistry is returned by the registry readers when the bindings bucket
// does not exist: no sidecar ever ran against this NATS account.
var ErrNoRegistry = errors.New("no bindings registry")
