//go:build unix

package main

import (
	"log/slog"
	"syscall"

	"github.com/threadbus/threadbus/sidecar"
)

// natsReserve is how many descriptors serve wants left, beyond
// --max-connections and the HTTP headroom, for the embedded NATS server
// (agents, JetStream files) and the process itself.
const natsReserve = 2048

// checkFileLimit warns when the descriptor limit is too low for
// maxConns: then a connection flood can starve NATS of descriptors before
// --max-connections refuses anything. (Go raises the soft limit to the
// hard one at start.)
func checkFileLimit(log *slog.Logger, maxConns int) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		log.Warn("cannot read the descriptor limit", "err", err)
		return
	}
	want := uint64(natsReserve)
	if maxConns > 0 {
		want += uint64(maxConns + sidecar.HTTPHeadroom)
	}
	if maxConns <= 0 || rl.Cur < want {
		log.Warn("descriptor limit too low for --max-connections: a connection flood could starve NATS and /readyz",
			"nofile", rl.Cur, "max_connections", maxConns, "want_at_least", want,
			"fix", "raise ulimit -n or lower --max-connections")
	}
}
