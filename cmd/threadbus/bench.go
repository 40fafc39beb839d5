package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/bench"
)

func benchCommand() *cli.Command {
	all := &cli.Command{
		Name:  "all",
		Usage: "run every scenario: latency, fanout, storm, inbound",
		Flags: append(benchFlags(), allScenarioFlags()...),
		Action: func(c *cli.Context) error {
			return runBench(c, benchConfig(c, bench.Scenarios, scenarioPrefix))
		},
	}
	return &cli.Command{
		Name:  "bench",
		Usage: "measure a sidecar next to baselines: latency, fan-out, bind storm, inbound",
		Description: "Runs a load generator in this process against a sidecar in another one: the\n" +
			"sidecar at --http and --nats-url, or by default a fresh `threadbus serve` per\n" +
			"phase (loopback, temporary data dir, nats-server WebSocket listener enabled for\n" +
			"the baselines), stopped with SIGTERM afterwards. Prints a table of figures,\n" +
			"each next to a baseline measured in the same run, and with --json writes them.\n\n" +
			"Examples:\n" +
			"  threadbus bench latency --rate 1000 --duration 10s\n" +
			"  threadbus bench storm --conns 1000 --conns 10000 --json storm.json\n" +
			"  threadbus bench storm --conns 10000 --auth\n" +
			"  threadbus bench all --json bench.json",
		Subcommands: []*cli.Command{
			scenarioCommand(bench.Latency, "p50/p99/p99.9 from JetStream publish to WebSocket frame, next to plain NATS subscribers", latencyFlags("")),
			scenarioCommand(bench.FanOut, "events/s to many connections on one thread, next to nats-server's WebSocket listener", fanOutFlags("")),
			scenarioCommand(bench.Storm, "many connections bind their own thread at once: time to replay, RSS per connection", stormFlags("")),
			scenarioCommand(bench.Inbound, "client frames/s into JetStream, next to async JetStream publishing", inboundFlags("")),
			all,
		},
	}
}

func scenarioCommand(s bench.Scenario, usage string, flags []cli.Flag) *cli.Command {
	return &cli.Command{
		Name:  string(s),
		Usage: usage,
		Flags: append(benchFlags(), flags...),
		Action: func(c *cli.Context) error {
			return runBench(c, benchConfig(c, []bench.Scenario{s}, func(bench.Scenario) string { return "" }))
		},
	}
}

func benchEnv(name string) []string { return envVars("BENCH_" + name) }

// benchFlags are every subcommand's flags.
func benchFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "http", Usage: "HTTP address (host:port) of a running sidecar; empty: start one per phase", EnvVars: benchEnv("HTTP")},
		&cli.StringFlag{Name: "nats-url", Usage: "NATS URL of the running sidecar's server (with --http)", EnvVars: benchEnv("NATS_URL")},
		&cli.StringFlag{Name: "nats-ws-url", Usage: "nats-server WebSocket listener (ws://host:port) for the baselines, with --http", EnvVars: benchEnv("NATS_WS_URL")},
		&cli.IntFlag{Name: "pid", Usage: "process id of the running sidecar, to read its RSS and CPU from /proc (default: from its /metrics)", EnvVars: benchEnv("PID")},
		&cli.StringFlag{Name: "binary", Usage: "threadbus binary to start (default: this one)", EnvVars: benchEnv("BINARY")},
		&cli.StringSliceFlag{Name: "sidecar-arg", Usage: "extra argument of threadbus serve for started sidecars (repeatable)", EnvVars: benchEnv("SIDECAR_ARG")},
		&cli.StringFlag{Name: "sidecar-log", Usage: "append started sidecars' logs to this file", EnvVars: benchEnv("SIDECAR_LOG")},
		&cli.IntFlag{Name: "payload-bytes", Value: bench.DefaultPayloadBytes, Usage: "size of each event and client frame", EnvVars: benchEnv("PAYLOAD_BYTES")},
		&cli.DurationFlag{Name: "wait-timeout", Value: bench.DefaultWaitTimeout, Usage: "longest wait for a phase to complete", EnvVars: benchEnv("WAIT_TIMEOUT")},
		&cli.IntFlag{Name: "dial-workers", Value: bench.DefaultDialWorkers, Usage: "connections opened at a time", EnvVars: benchEnv("DIAL_WORKERS")},
		&cli.StringFlag{Name: "json", Usage: "also write the report as JSON to this file", EnvVars: benchEnv("JSON")},
		&cli.BoolFlag{Name: "quiet", Usage: "no progress lines on stderr", EnvVars: benchEnv("QUIET")},
	}
}

func scenarioPrefix(s bench.Scenario) string { return string(s) + "-" }

func allScenarioFlags() []cli.Flag {
	var flags []cli.Flag
	flags = append(flags, latencyFlags(scenarioPrefix(bench.Latency))...)
	flags = append(flags, fanOutFlags(scenarioPrefix(bench.FanOut))...)
	flags = append(flags, stormFlags(scenarioPrefix(bench.Storm))...)
	return append(flags, inboundFlags(scenarioPrefix(bench.Inbound))...)
}

// flagEnv is a scenario flag's variable, THREADBUS_BENCH_<SCENARIO>_<NAME>,
// whether the flag is prefixed (in all) or not.
func flagEnv(s bench.Scenario, name string) []string {
	return benchEnv(strings.ToUpper(string(s) + "_" + strings.ReplaceAll(name, "-", "_")))
}

func latencyFlags(p string) []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: p + "rate", Value: bench.DefaultLatencyRate, Usage: "latency: events published per second", EnvVars: flagEnv(bench.Latency, "rate")},
		&cli.DurationFlag{Name: p + "duration", Value: bench.DefaultLatencyDuration, Usage: "latency: how long to measure", EnvVars: flagEnv(bench.Latency, "duration")},
		&cli.DurationFlag{Name: p + "warmup", Value: bench.DefaultLatencyWarmup, Usage: "latency: how long to publish before measuring", EnvVars: flagEnv(bench.Latency, "warmup")},
		&cli.IntFlag{Name: p + "conns", Value: 1, Usage: "latency: WebSocket connections bound to the thread", EnvVars: flagEnv(bench.Latency, "conns")},
		&cli.IntFlag{Name: p + "flood", Usage: "latency: connections flooding the sidecar with client frames meanwhile (reconnecting when closed)", EnvVars: flagEnv(bench.Latency, "flood")},
	}
}

func fanOutFlags(p string) []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: p + "conns", Value: bench.DefaultFanOutConns, Usage: "fanout: connections on the one thread (and baseline clients)", EnvVars: flagEnv(bench.FanOut, "conns")},
		&cli.IntFlag{Name: p + "events", Value: bench.DefaultFanOutEvents, Usage: "fanout: events published", EnvVars: flagEnv(bench.FanOut, "events")},
		&cli.IntFlag{Name: p + "window", Value: bench.DefaultFanOutWindow, Usage: "fanout: events the publisher may be ahead of the average receiver", EnvVars: flagEnv(bench.FanOut, "window")},
	}
}

func stormFlags(p string) []cli.Flag {
	return []cli.Flag{
		&cli.IntSliceFlag{Name: p + "conns", Value: cli.NewIntSlice(bench.DefaultStormConns), Usage: "storm: connections, each binding its own thread (repeatable: one storm per size)", EnvVars: flagEnv(bench.Storm, "conns")},
		&cli.IntFlag{Name: p + "events", Value: bench.DefaultStormEvents, Usage: "storm: stored events each thread replays", EnvVars: flagEnv(bench.Storm, "events")},
		&cli.DurationFlag{Name: p + "idle", Usage: "storm: keep the bound connections idle this long before reading memory (130s: after the sidecar's periodic GC)", EnvVars: flagEnv(bench.Storm, "idle")},
		&cli.BoolFlag{Name: p + "connect", Usage: "storm: each connection binds as it connects (?thread_id=T&since=0) and is timed from its dial, as reconnecting clients are", EnvVars: flagEnv(bench.Storm, "connect")},
		&cli.BoolFlag{Name: p + "restart", Usage: "storm: restart the sidecar (same data dir) between storing the events and the storm: a cold start", EnvVars: flagEnv(bench.Storm, "restart")},
		&cli.BoolFlag{Name: p + "no-baseline", Usage: "storm: skip the nats.go baseline", EnvVars: flagEnv(bench.Storm, "no-baseline")},
		&cli.BoolFlag{Name: p + "grouped", Usage: "storm: store each thread's events together instead of interleaved with every other thread's", EnvVars: flagEnv(bench.Storm, "grouped")},
		&cli.BoolFlag{Name: p + "auth", Usage: "storm: also run it against a sidecar with --auth jwt --authz nats (a token and a user per connection, hook answered by the bench, cache cold), next to the one without auth", EnvVars: flagEnv(bench.Storm, "auth")},
	}
}

func inboundFlags(p string) []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: p + "conns", Value: bench.DefaultInboundConns, Usage: "inbound: connections sending frames, each on its own thread", EnvVars: flagEnv(bench.Inbound, "conns")},
		&cli.IntFlag{Name: p + "frames", Value: bench.DefaultInboundFrames, Usage: "inbound: frames each connection sends", EnvVars: flagEnv(bench.Inbound, "frames")},
	}
}

// benchConfig maps the flags onto a bench.Config; prefix names each
// scenario's flags.
func benchConfig(c *cli.Context, scenarios []bench.Scenario, prefix func(bench.Scenario) string) bench.Config {
	cfg := bench.Config{
		Scenarios:        scenarios,
		HTTPAddr:         c.String("http"),
		NATSURL:          c.String("nats-url"),
		NATSWebSocketURL: c.String("nats-ws-url"),
		PID:              c.Int("pid"),
		Binary:           c.String("binary"),
		SidecarArgs:      c.StringSlice("sidecar-arg"),
		PayloadBytes:     c.Int("payload-bytes"),
		WaitTimeout:      c.Duration("wait-timeout"),
		DialWorkers:      c.Int("dial-workers"),
	}
	if !c.Bool("quiet") {
		cfg.Progress = os.Stderr
	}
	for _, s := range scenarios {
		p := prefix(s)
		switch s {
		case bench.Latency:
			cfg.Latency = bench.LatencyConfig{Rate: c.Int(p + "rate"), Duration: c.Duration(p + "duration"), Warmup: c.Duration(p + "warmup"), Conns: c.Int(p + "conns"), Flood: c.Int(p + "flood")}
		case bench.FanOut:
			cfg.FanOut = bench.FanOutConfig{Conns: c.Int(p + "conns"), Events: c.Int(p + "events"), Window: c.Int(p + "window")}
		case bench.Storm:
			cfg.Storm = bench.StormConfig{Conns: c.IntSlice(p + "conns"), Events: c.Int(p + "events"), Grouped: c.Bool(p + "grouped"), Connect: c.Bool(p + "connect"), Restart: c.Bool(p + "restart"), NoBaseline: c.Bool(p + "no-baseline"), Idle: c.Duration(p + "idle"), Auth: c.Bool(p + "auth")}
		case bench.Inbound:
			cfg.Inbound = bench.InboundConfig{Conns: c.Int(p + "conns"), Frames: c.Int(p + "frames")}
		}
	}
	return cfg
}

func runBench(c *cli.Context, cfg bench.Config) error {
	if path := c.String("sidecar-log"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("--sidecar-log: %w", err)
		}
		defer f.Close()
		cfg.KeepSidecarLog = f
	}
	rep, err := bench.Run(c.Context, cfg)
	if rep != nil {
		if werr := rep.WriteTable(c.App.Writer); werr != nil && err == nil {
			err = werr
		}
		if path := c.String("json"); path != "" {
			if werr := rep.WriteJSON(path); werr != nil && err == nil {
				err = werr
			}
		}
	}
	return err
}
