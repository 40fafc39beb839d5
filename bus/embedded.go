package bus

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	// ServerName names the server; by default nats-server picks one. The
	// servers of a cluster need distinct names that stay the same across
	// restarts: by default, a clustered server is named after its cluster
	// address.
	ServerName string
	// ClusterName names the cluster this server forms with the servers of
	// Routes (a JetStream cluster: streams replicated across them). By
	// default, "threadbus" when ClusterListen is set.
	ClusterName string
	// ClusterListen is the address, host:port, other servers of the cluster
	// connect to. Port 0 picks a free port. Empty: no cluster, unless the
	// config file sets one.
	ClusterListen string
	// Routes are the cluster addresses of the other servers
	// (nats-route://host:port, or host:port). A server may list itself.
	Routes []string
	// Token, or User and Password, is what clients must present, unless
	// ConfigFile has an authorization of its own. A server listening
	// beyond loopback must require one or the other: StartServer refuses
	// to start one that anyone who reaches the port could use.
	Token, User, Password string
	Logger                *slog.Logger
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
		host, p, err := splitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: listen address %q: %w", listen, err)
		}
		opts.Host, opts.Port = host, p
	}
	if opts.Authorization == "" && opts.Username == "" && len(opts.Users) == 0 && len(opts.Nkeys) == 0 {
		switch {
		case cfg.Token != "":
			opts.Authorization = cfg.Token
		case cfg.User != "":
			opts.Username, opts.Password = cfg.User, cfg.Password
		}
	}
	if !isLoopbackHost(opts.Host) && !requiresAuth(opts) {
		return nil, fmt.Errorf("embedded nats: %w: listening on %q", ErrNoAuth, opts.Host)
	}
	opts.JetStream = true
	if opts.StoreDir == "" {
		if cfg.StoreDir == "" {
			return nil, fmt.Errorf("embedded nats: no JetStream store directory")
		}
		opts.StoreDir = filepath.Join(cfg.StoreDir, "jetstream")
	}
	if err := clusterOptions(opts, cfg); err != nil {
		return nil, err
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

// clusterOptions sets the cluster of opts from cfg, unless the config file
// set one.
func clusterOptions(opts *server.Options, cfg ServerConfig) error {
	if cfg.ClusterListen == "" || opts.Cluster.Port != 0 {
		if len(cfg.Routes) > 0 && cfg.ClusterListen == "" && opts.Cluster.Port == 0 {
			return fmt.Errorf("embedded nats: routes without a cluster listen address")
		}
		return nil
	}
	host, port, err := splitHostPort(cfg.ClusterListen)
	if err != nil {
		return fmt.Errorf("embedded nats: cluster listen address %q: %w", cfg.ClusterListen, err)
	}
	opts.Cluster.Host, opts.Cluster.Port = host, port
	opts.Cluster.Name = cfg.ClusterName
	if opts.Cluster.Name == "" {
		opts.Cluster.Name = "threadbus"
	}
	for _, r := range cfg.Routes {
		if !strings.Contains(r, "://") {
			r = "nats-route://" + r
		}
		u, err := url.Parse(r)
		if err != nil {
			return fmt.Errorf("embedded nats: route %q: %w", r, err)
		}
		opts.Routes = append(opts.Routes, u)
	}
	if cfg.ServerName == "" && opts.ServerName == "" && port != server.RANDOM_PORT {
		name, err := clusterServerName(host, port)
		if err != nil {
			return err
		}
		opts.ServerName = name
	}
	return nil
}

// clusterServerName names a clustered server after its cluster address:
// stable across restarts (JetStream knows its peers by name) and distinct
// within the cluster. Nodes that all listen on an unspecified address
// (0.0.0.0:6222, the usual container setup) are told apart by host name.
func clusterServerName(host string, port int) (string, error) {
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		hn, err := os.Hostname()
		if err != nil || hn == "" {
			return "", fmt.Errorf("embedded nats: name the server: cluster listen address %s:%d is unspecified and the host name is unknown (%v)", host, port, err)
		}
		host = hn
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	return "threadbus-" + strings.NewReplacer(":", "-", ".", "-", "[", "", "]", "").Replace(addr), nil
}

// splitHostPort parses host:port; port 0 means a random port.
func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("bad port %q", port)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	return host, p, nil
}

// isLoopbackHost reports whether a listen host is loopback only.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// requiresAuth reports whether the server authenticates every client.
func requiresAuth(o *server.Options) bool {
	auth := o.Authorization != "" || o.Username != "" || len(o.Users) > 0 || len(o.Nkeys) > 0 ||
		o.AuthCallout != nil || len(o.TrustedOperators) > 0 || o.CustomClientAuthentication != nil
	return auth && o.NoAuthUser == "" // a no_auth_user lets anyone in as that user
}

// serverLogger adapts nats-server's logger to slog.
type serverLogger struct{ l *slog.Logger }

func (s *serverLogger) Noticef(format string, v ...any) { s.l.Info(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Tracef(format string, v ...any)  {}
