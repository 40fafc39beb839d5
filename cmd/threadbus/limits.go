package main

import (
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/sidecar"
)

// limitFlags are serve's per-connection limits (sidecar.Limits). A
// negative value turns a limit off.
func limitFlags() []cli.Flag {
	return []cli.Flag{
		&cli.Float64Flag{Name: "frame-rate", Value: sidecar.DefaultFrameRate, Usage: "frames per second one connection may send, sustained (pings count); over it: error rate_limited", EnvVars: envVars("FRAME_RATE")},
		&cli.IntFlag{Name: "frame-burst", Value: sidecar.DefaultFrameBurst, Usage: "frames one connection may send at once", EnvVars: envVars("FRAME_BURST")},
		&cli.IntFlag{Name: "inbound-bytes-rate", Value: sidecar.DefaultByteRate, Usage: "bytes of frames per second one connection may send (burst: 4 s worth, at least one largest frame)", EnvVars: envVars("INBOUND_BYTES_RATE")},
		&cli.Float64Flag{Name: "bind-rate", Value: sidecar.DefaultBindRate, Usage: "binds and switches per second one client may cause", EnvVars: envVars("BIND_RATE")},
		&cli.IntFlag{Name: "bind-burst", Value: sidecar.DefaultBindBurst, Usage: "binds and switches one client may cause at once", EnvVars: envVars("BIND_BURST")},
		&cli.IntFlag{Name: "new-threads-per-minute", Value: sidecar.DefaultNewThreadsPerMinute, Usage: "threads per minute one connection may bind that are none of its last 4", EnvVars: envVars("NEW_THREADS_PER_MINUTE")},
		&cli.IntFlag{Name: "rate-limit-tolerance", Value: sidecar.DefaultRateLimitTolerance, Usage: "refusals (one forgiven per second) before a connection is closed with 1008 rate limit", EnvVars: envVars("RATE_LIMIT_TOLERANCE")},
		&cli.Float64Flag{Name: "client-log-rate", Value: sidecar.DefaultLogRate, Usage: "log lines per second clients can cause, sidecar-wide (binds beyond it log at debug)", EnvVars: envVars("CLIENT_LOG_RATE")},
	}
}

func limitsConfig(c *cli.Context) sidecar.Limits {
	return sidecar.Limits{
		FrameRate:           c.Float64("frame-rate"),
		FrameBurst:          c.Int("frame-burst"),
		ByteRate:            c.Int("inbound-bytes-rate"),
		BindRate:            c.Float64("bind-rate"),
		BindBurst:           c.Int("bind-burst"),
		NewThreadsPerMinute: c.Int("new-threads-per-minute"),
		RateLimitTolerance:  c.Int("rate-limit-tolerance"),
		LogRate:             c.Float64("client-log-rate"),
	}
}
