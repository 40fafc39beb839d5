package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/sidecar"
	"github.com/threadbus/threadbus/ui"
)

const shutdownTimeout = 15 * time.Second

func envVars(name string) []string { return []string{"THREADBUS_" + name} }

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the sidecar (with an embedded NATS server unless --nats-url is given)",
		Description: "Serves WebSocket clients on /ws, and /healthz and /readyz, on --listen.\n" +
			"Without --nats-url it starts an embedded nats-server with JetStream that agents\n" +
			"reach on --nats-listen, storing under --data-dir.\n\n" +
			"Example:\n  threadbus serve --listen 127.0.0.1:8080 --replay-grace 1m",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8080", Usage: "HTTP and WebSocket address", EnvVars: envVars("LISTEN")},
			&cli.StringFlag{Name: "nats-url", Usage: "NATS server or cluster to use; empty starts an embedded server", EnvVars: envVars("NATS_URL")},
			&cli.StringFlag{Name: "nats-listen", Value: "127.0.0.1:4222", Usage: "embedded NATS server's client address, for agents", EnvVars: envVars("NATS_LISTEN")},
			&cli.StringFlag{Name: "data-dir", Value: "./threadbus-data", Usage: "embedded NATS server's JetStream storage", EnvVars: envVars("DATA_DIR")},
			&cli.StringFlag{Name: "nats-cluster-listen", Usage: "embedded NATS server's cluster address (host:port): forms a JetStream cluster with --nats-routes", EnvVars: envVars("NATS_CLUSTER_LISTEN")},
			&cli.StringSliceFlag{Name: "nats-routes", Usage: "cluster addresses (host:port) of the embedded servers of the other sidecars (repeatable, or comma-separated)", EnvVars: envVars("NATS_ROUTES")},
			&cli.StringFlag{Name: "nats-cluster-name", Value: "threadbus", Usage: "name of the embedded servers' cluster", EnvVars: envVars("NATS_CLUSTER_NAME")},
			&cli.StringFlag{Name: "nats-config", Usage: "nats-server config file for the embedded server", EnvVars: envVars("NATS_CONFIG")},
			&cli.DurationFlag{Name: "replay-grace", Value: sidecar.DefaultReplayGrace, Usage: "how far back a binding without since replays", EnvVars: envVars("REPLAY_GRACE")},
			&cli.Int64Flag{Name: "replay-cache-bytes", Value: bus.DefaultRecentBytes, Usage: "memory for the recent events that answer replays without reading the stream; 0 turns it off", EnvVars: envVars("REPLAY_CACHE_BYTES")},
			&cli.DurationFlag{Name: "retention", Value: bus.DefaultRetention, Usage: "how long the THREADS stream keeps frames and events", EnvVars: envVars("RETENTION")},
			&cli.IntFlag{Name: "replicas", Usage: "replicas of THREADS and the bindings bucket when this sidecar creates them; 0: 3 on a cluster of 3 or more servers, else 1", EnvVars: envVars("REPLICAS")},
			&cli.DurationFlag{Name: "registry-ttl", Value: bus.DefaultRegistryTTL, Usage: "how long a binding outlives its sidecar in the registry", EnvVars: envVars("REGISTRY_TTL")},
			&cli.Int64Flag{Name: "max-frame-bytes", Value: sidecar.DefaultMaxFrameBytes, Usage: "largest client frame; larger ones close with 1009", EnvVars: envVars("MAX_FRAME_BYTES")},
			&cli.IntFlag{Name: "send-queue-bytes", Value: sidecar.DefaultSendQueueBytes, Usage: "per-connection send queue; overflow closes with 1008", EnvVars: envVars("SEND_QUEUE_BYTES")},
			&cli.DurationFlag{Name: "write-timeout", Value: sidecar.DefaultWriteTimeout, Usage: "longest write to a client (one batch of queued frames)", EnvVars: envVars("WRITE_TIMEOUT")},
			&cli.StringFlag{Name: "sidecar-id", Usage: "this sidecar's id in headers and logs (default: random)", EnvVars: envVars("SIDECAR_ID")},
			&cli.StringSliceFlag{Name: "allowed-origin", Usage: "browser origin host pattern allowed besides the sidecar's own host (repeatable)", EnvVars: envVars("ALLOWED_ORIGIN")},
			&cli.StringFlag{Name: "pprof-listen", Usage: "serve net/http/pprof on this address (host:port), for profiling; empty: off", EnvVars: envVars("PPROF_LISTEN")},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: envVars("LOG_LEVEL")},
			&cli.BoolFlag{Name: "ui", Value: true, Usage: "serve the thread viewer page at / (--ui=false: off)", EnvVars: envVars("UI")},
		}, slices.Concat(authFlags(), limitFlags(), storeFlags(), admissionFlags(), natsAuthFlags())...),
		Action: func(c *cli.Context) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			ac, err := authConfigFrom(c, c.String("listen"))
			if err != nil {
				return err
			}
			maxBytes, err := parseSize(c.String("store-max-bytes"))
			if err != nil {
				return fmt.Errorf("--store-max-bytes: %w", err)
			}
			admission, err := admissionConfig(c, c.String("listen"))
			if err != nil {
				return err
			}
			return serve(c.Context, log, serveConfig{
				auth:       ac,
				listen:     c.String("listen"),
				pprof:      c.String("pprof-listen"),
				natsURL:    c.String("nats-url"),
				natsListen: c.String("nats-listen"),
				dataDir:    c.String("data-dir"),
				natsConfig: c.String("nats-config"),
				cluster: clusterConfig{
					listen: c.String("nats-cluster-listen"),
					routes: c.StringSlice("nats-routes"),
					name:   c.String("nats-cluster-name"),
				},
				retention:   c.Duration("retention"),
				replayCache: c.Int64("replay-cache-bytes"),
				registryTTL: c.Duration("registry-ttl"),
				ui:          c.Bool("ui"),
				replicas:    c.Int("replicas"),
				maxBytes:    maxBytes,
				maxMsgs:     c.Int64("store-max-msgs-per-thread"),
				natsAuth:    natsAuthConfig(c),
				sidecar: sidecar.Config{
					SidecarID:      c.String("sidecar-id"),
					ReplayGrace:    c.Duration("replay-grace"),
					MaxFrameBytes:  c.Int64("max-frame-bytes"),
					SendQueueBytes: c.Int("send-queue-bytes"),
					WriteTimeout:   c.Duration("write-timeout"),
					OriginPatterns: c.StringSlice("allowed-origin"),
					Limits:         limitsConfig(c),
					Admission:      admission,
					Logger:         log,
				},
			})
		},
	}
}

type serveConfig struct {
	listen, natsURL, natsListen, dataDir, natsConfig string
	pprof                                            string // net/http/pprof address; empty: off
	retention, registryTTL                           time.Duration
	auth                                             authConfig
	ui                                               bool // serve the viewer at /
	replicas                                         int
	replayCache                                      int64 // bytes; 0: off
	cluster                                          clusterConfig
	maxBytes, maxMsgs                                int64 // THREADS size limits, see bus.Config
	natsAuth                                         natsAuth
	sidecar                                          sidecar.Config
}

// clusterConfig is the embedded server's cluster, if any.
type clusterConfig struct {
	listen, name string
	routes       []string
}

// serve runs the sidecar until ctx is cancelled, then shuts down in order:
// stop accepting, close clients with 1012, drain NATS, stop the embedded server.
func serve(ctx context.Context, log *slog.Logger, cfg serveConfig) error {
	if cfg.pprof != "" {
		stop, err := servePprof(log, cfg.pprof)
		if err != nil {
			return err
		}
		defer stop()
	}
	v, err := cfg.auth.verifier(ctx)
	if err != nil {
		return err
	}
	if v != nil {
		defer v.Close()
		cfg.sidecar.Verifier = v
		cfg.sidecar.TokenLeeway = cfg.auth.leeway
	}
	url := cfg.natsURL
	if url == "" {
		ns, err := bus.StartServer(bus.ServerConfig{
			Listen:        cfg.natsListen,
			StoreDir:      cfg.dataDir,
			ConfigFile:    cfg.natsConfig,
			ClusterListen: cfg.cluster.listen,
			ClusterName:   cfg.cluster.name,
			Routes:        cfg.cluster.routes,
			Token:         cfg.natsAuth.token,
			User:          cfg.natsAuth.user,
			Password:      cfg.natsAuth.password,
			Logger:        log,
		})
		if err != nil {
			return err
		}
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}()
		url = ns.ClientURL()
		logEmbedded(log, ns)
		if cfg.cluster.listen != "" && cfg.replicas == 0 {
			// Other servers may not have joined yet: do not infer it.
			cfg.replicas = min(3, 1+len(cfg.cluster.routes))
		}
	}
	recentBytes := int(cfg.replayCache)
	if recentBytes <= 0 {
		recentBytes = -1 // off
	}
	grace := cfg.sidecar.ReplayGrace
	if grace <= 0 {
		grace = sidecar.DefaultReplayGrace
	}
	b, err := bus.Open(ctx, bus.Config{
		URL: url, Retention: cfg.retention, Replicas: cfg.replicas, RegistryTTL: cfg.registryTTL,
		RecentBytes: recentBytes, RecentSpan: grace, Logger: log,
		MaxBytes: cfg.maxBytes, MaxMsgsPerSubject: cfg.maxMsgs, Options: cfg.natsAuth.options(),
	})
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := b.Close(closeCtx); err != nil {
			log.Warn("closing nats", "err", err)
		}
	}()
	cfg.sidecar.Bus = b
	cfg.sidecar.TokenQueryParam = cfg.auth.queryParam
	cfg.sidecar.MaxConnsPerUser = cfg.auth.maxConnsPerUser
	authz, err := cfg.auth.authorizer(b.Conn())
	if err != nil {
		return err
	}
	if authz != nil {
		cfg.sidecar.Authorizer = authz
	}
	sc, err := sidecar.New(cfg.sidecar)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.listen, err)
	}
	checkFileLimit(log, cfg.sidecar.Admission.MaxConnections)
	handler := sc.Handler()
	if cfg.ui {
		handler = ui.Wrap(handler)
	}
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(sc.LimitListener(ln)) }()
	log.Info("threadbus ready", "http", ln.Addr().String(), "nats", bus.RedactURL(url), "sidecar", sc.ID(), "epoch", b.Epoch(),
		"auth", cfg.auth.mode(), "authz", cfg.auth.authz)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-served:
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(closeCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if err := sc.Close(closeCtx); err != nil {
		log.Warn("closing connections", "err", err)
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("http: %w", serveErr)
	}
	return nil
}

func logEmbedded(log *slog.Logger, ns *server.Server) {
	log.Info("embedded nats-server started", "url", ns.ClientURL(), "store_dir", ns.JetStreamConfig().StoreDir)
}
