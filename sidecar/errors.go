package sidecar

import "errors"

var (
	// ErrConnClosed is returned for work on a connection that has closed.
	ErrConnClosed = errors.New("connection closed")
	// ErrServerClosed is returned by Server methods after Close.
	ErrServerClosed = errors.New("sidecar closed")

	errConnectionLimit = errors.New("connection limit of the user reached")
)

// Close statuses and reasons the sidecar sends.
const (
	reasonSlowConsumer = "slow consumer"
	reasonRestart      = "server restart"
	reasonFeedFailed   = "live feed failed, resume with since"
)
