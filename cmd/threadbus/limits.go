package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/sidecar"
)

// storeFlags bound the THREADS stream (bus.Config.MaxBytes and
// MaxMsgsPerSubject).
func storeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "store-max-bytes", Value: "8GiB", Usage: "largest size of the THREADS stream (e.g. 500MiB, 8GiB; -1: no limit); the oldest messages go first", EnvVars: envVars("STORE_MAX_BYTES")},
		&cli.Int64Flag{Name: "store-max-msgs-per-thread", Value: bus.DefaultMaxMsgsPerSubject, Usage: "messages kept per thread and direction (-1: no limit); the thread's oldest go first", EnvVars: envVars("STORE_MAX_MSGS_PER_THREAD")},
	}
}

// parseSize reads a byte count: an integer with an optional unit B, KiB,
// MiB, GiB, TiB (or KB, MB, GB, TB, also powers of 1024). -1 is no limit.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}, {"KB", 10}, {"MB", 20}, {"GB", 30}, {"TB", 40}, {"B", 0}}
	shift := uint(0)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) {
			t, shift = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < -1 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit (KiB, MiB, GiB, TiB), or -1", s)
	}
	if n == -1 {
		return -1, nil
	}
	return n << shift, nil
}

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
		&cli.DurationFlag{Name: "ping-interval", Value: sidecar.DefaultPingInterval, Usage: "how often the server pings each connection (negative: never)", EnvVars: envVars("PING_INTERVAL")},
		&cli.DurationFlag{Name: "pong-timeout", Value: sidecar.DefaultPongTimeout, Usage: "how long a ping waits for its pong before the connection is closed", EnvVars: envVars("PONG_TIMEOUT")},
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
		PingInterval:        c.Duration("ping-interval"),
		PongTimeout:         c.Duration("pong-timeout"),
	}
}

// admissionFlags decide which handshakes serve accepts (sidecar.Admission).
func admissionFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "max-connections", Value: sidecar.DefaultMaxConnections, Usage: "WebSocket connections open at once; beyond: HTTP 503 before upgrading (-1: no limit)", EnvVars: envVars("MAX_CONNECTIONS")},
		&cli.IntFlag{Name: "max-conns-per-ip", Value: sidecar.DefaultMaxConnsPerIP, Usage: "connections of one client address, except --conns-per-ip-exempt; beyond: HTTP 503 (-1: no limit)", EnvVars: envVars("MAX_CONNS_PER_IP")},
		&cli.Float64Flag{Name: "conn-rate-per-ip", Value: sidecar.DefaultConnRatePerIP, Usage: "connections per second one client address may open, except --conns-per-ip-exempt; beyond: HTTP 503 (-1: no limit)", EnvVars: envVars("CONN_RATE_PER_IP")},
		&cli.IntFlag{Name: "conn-burst-per-ip", Value: sidecar.DefaultConnBurstPerIP, Usage: "connections one client address may open at once", EnvVars: envVars("CONN_BURST_PER_IP")},
		&cli.StringSliceFlag{Name: "conns-per-ip-exempt", Value: cli.NewStringSlice("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"), Usage: "client addresses (CIDR) --max-conns-per-ip does not count: where proxies and benchmarks connect from", EnvVars: envVars("CONNS_PER_IP_EXEMPT")},
		&cli.StringSliceFlag{Name: "trusted-proxies", Usage: "peers (CIDR or address) whose X-Forwarded-For names the client address (repeatable)", EnvVars: envVars("TRUSTED_PROXIES")},
		&cli.StringSliceFlag{Name: "allowed-host", Usage: "Host header names a handshake may use, *.domain for subdomains (repeatable; default: loopback names when --listen is loopback, else any)", EnvVars: envVars("ALLOWED_HOST")},
	}
}

// admissionConfig maps the admission flags; listen decides the default
// --allowed-host.
func admissionConfig(c *cli.Context, listen string) (sidecar.Admission, error) {
	exempt, err := sidecar.ParsePrefixes(c.StringSlice("conns-per-ip-exempt"))
	if err != nil {
		return sidecar.Admission{}, fmt.Errorf("--conns-per-ip-exempt: %w", err)
	}
	if exempt == nil {
		exempt = []netip.Prefix{} // set to nothing: exempt nothing
	}
	proxies, err := sidecar.ParsePrefixes(c.StringSlice("trusted-proxies"))
	if err != nil {
		return sidecar.Admission{}, fmt.Errorf("--trusted-proxies: %w", err)
	}
	hosts := c.StringSlice("allowed-host")
	if len(hosts) == 0 && isLoopback(listen) {
		hosts = sidecar.LoopbackHosts
	}
	return sidecar.Admission{
		MaxConnections: c.Int("max-connections"),
		MaxConnsPerIP:  c.Int("max-conns-per-ip"),
		ConnRatePerIP:  c.Float64("conn-rate-per-ip"),
		ConnBurstPerIP: c.Int("conn-burst-per-ip"),
		Exempt:         exempt,
		TrustedProxies: proxies,
		AllowedHosts:   hosts,
	}, nil
}

// natsAuthFlags are the credentials the embedded NATS server requires and
// the sidecar presents (to the embedded server or to --nats-url).
func natsAuthFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "nats-token", Usage: "token the embedded NATS server requires of clients, and the sidecar presents; required (or --nats-user, or an authorization block in --nats-config) when --nats-listen is not loopback", EnvVars: envVars("NATS_TOKEN")},
		&cli.StringFlag{Name: "nats-user", Usage: "user the embedded NATS server requires, with --nats-password; the sidecar connects as it", EnvVars: envVars("NATS_USER")},
		&cli.StringFlag{Name: "nats-password", Usage: "password of --nats-user", EnvVars: envVars("NATS_PASSWORD")},
	}
}

type natsAuth struct{ token, user, password string }

func natsAuthConfig(c *cli.Context) natsAuth {
	return natsAuth{token: c.String("nats-token"), user: c.String("nats-user"), password: c.String("nats-password")}
}

// options are the sidecar's NATS connection options for these credentials.
func (a natsAuth) options() []nats.Option {
	switch {
	case a.token != "":
		return []nats.Option{nats.Token(a.token)}
	case a.user != "":
		return []nats.Option{nats.UserInfo(a.user, a.password)}
	}
	return nil
}
