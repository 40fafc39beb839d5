package bench

import "errors"

var (
	// ErrConfig is returned for a Config that cannot be run.
	ErrConfig = errors.New("bench: bad config")
	// ErrUnknownScenario is returned for a scenario name Run does not know.
	ErrUnknownScenario = errors.New("bench: unknown scenario")
	// ErrSidecar is returned when a started sidecar fails to come up or
	// exits early; the error carries the tail of its log.
	ErrSidecar = errors.New("bench: sidecar failed")
	// ErrIncomplete is returned when a phase did not complete within
	// Config.WaitTimeout: connections that never bound, events never received.
	ErrIncomplete = errors.New("bench: phase incomplete")
	// ErrRefused is returned when the sidecar answers a handshake with an
	// error frame instead of connection_established (a refused token).
	ErrRefused = errors.New("bench: connection refused by the sidecar")
)
