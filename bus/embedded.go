package bus

import (
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerConfig configures an embedded nats-server.
type ServerConfig struct {
	// Listen is the client address, host:port. Port 0 picks a free port.
	// By default, 127.0.0.1:4222. Ignored when ConfigFile sets host or port.
	Listen string
	// StoreDir is where JetStream keeps its files. Ignored when ConfigFile
	// sets store_dir. Required otherwise.
	StoreDir string
	// ConfigFile is an optional nats-server configuration file. JetStream is
	// enabled whatever it says.
	ConfigFile string
	// ServerName names the server; by default nats-server picks one.
	ServerName string
	Logger     *slog.Logger
}

// StartServer starts an embedded nats-server with JetStream and waits until
// it accepts clients. Stop it with Shutdown and WaitForShutdown.
func StartServer(cfg ServerConfig) (*server.Server, error) {
	opts := &server.Options{}
	if cfg.ConfigFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(cfg.ConfigFile); err != nil {
			return nil, fmt.Errorf("embedded nats: config %s: %w", cfg.ConfigFile, err)
		}
	}
	if opts.Host == "" && opts.Port == 0 {
		listen := cfg.Listen
		if listen == "" {
			listen = "127.0.0.1:4222"
		}
		host, port, err := net.SplitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: listen address %q: %w", listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("embedded nats: listen address %q: bad port", listen)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	opts.JetStream = true
	if opts.StoreDir == "" {
		if cfg.StoreDir == "" {
			return nil, fmt.Errorf("embedded nats: no JetStream store directory")
		}
		opts.StoreDir = filepath.Join(cfg.StoreDir, "jetstream")
	}
	if cfg.ServerName != "" && opts.ServerName == "" {
		opts.ServerName = cfg.ServerName
	}
	opts.NoSigs = true // the sidecar owns signal handling
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if cfg.Logger != nil {
		ns.SetLoggerV2(&serverLogger{l: cfg.Logger.With("component", "nats-server")}, false, false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready for connections after 10s (listen %s:%d)", opts.Host, opts.Port)
	}
	return ns, nil
}

// serverLogger adapts nats-server's logger to slog.
type serverLogger struct{ l *slog.Logger }

func (s *serverLogger) Noticef(format string, v ...any) { s.l.Info(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Tracef(format string, v ...any)  {}
