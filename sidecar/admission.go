package sidecar

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/threadbus/threadbus/metrics"
)

// Defaults of Admission.
const (
	// DefaultMaxConnections leaves 5,000 descriptors of a 20,000 limit to
	// the embedded NATS server (agents, JetStream files), HTTP requests
	// (/readyz, /metrics, refused handshakes) and logs.
	DefaultMaxConnections = 15_000
	// DefaultMaxConnsPerIP is far above what a user (3 connections in the
	// legacy frontend) or an office behind one NAT opens, and below what
	// one client can hold the sidecar with.
	DefaultMaxConnsPerIP = 1000
	// DefaultConnRatePerIP and DefaultConnBurstPerIP bound how fast one
	// address opens connections: a client reconnecting in a loop would
	// otherwise get a fresh frame burst each time.
	DefaultConnRatePerIP  = 5
	DefaultConnBurstPerIP = 50
	// HTTPHeadroom is how many sockets beyond MaxConnections the listener
	// returned by Server.LimitListener accepts: plain HTTP requests and
	// handshakes being refused.
	HTTPHeadroom = 512
)

// Admission decides which WebSocket handshakes the sidecar accepts, before
// upgrading: a refused one is answered with HTTP 503 (too many) or 403 (a
// Host not allowed), counted in threadbus_refused_total by reason.
type Admission struct {
	// MaxConnections bounds the WebSocket connections open at once. By
	// default, DefaultMaxConnections (15,000); negative: no limit.
	MaxConnections int
	// MaxConnsPerIP bounds the connections of one client address. By
	// default, DefaultMaxConnsPerIP (1000); negative: no limit.
	// Addresses in Exempt are not counted.
	MaxConnsPerIP int
	// ConnRatePerIP is how many connections per second one address may
	// open, and ConnBurstPerIP how many at once. By default, 5/s and 50;
	// negative: no limit. Addresses in Exempt are not counted.
	ConnRatePerIP  float64
	ConnBurstPerIP int
	// Exempt are client addresses MaxConnsPerIP and ConnRatePerIP do not
	// apply to. An IPv6 client counts by its /64. By
	// default (nil), DefaultExempt: loopback and private addresses, where
	// reverse proxies (whose clients all share its address) and the
	// benchmarks connect from. An empty non-nil slice exempts nothing.
	Exempt []netip.Prefix
	// TrustedProxies are peers whose X-Forwarded-For header names the
	// client: its rightmost address that is not itself a trusted proxy.
	// From any other peer the header is ignored. By default, none.
	TrustedProxies []netip.Prefix
	// AllowedHosts are the Host header values (without port) a handshake
	// may name; "*.example.com" matches subdomains. Empty: any. A sidecar
	// listening on loopback should allow only loopback names, so that a
	// page on a rebinding domain (Host and Origin both evil.example) cannot
	// reach it (serve does so by default).
	AllowedHosts []string
}

func (a Admission) withDefaults() Admission {
	if a.MaxConnections == 0 {
		a.MaxConnections = DefaultMaxConnections
	}
	if a.MaxConnsPerIP == 0 {
		a.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if a.ConnRatePerIP == 0 {
		a.ConnRatePerIP = DefaultConnRatePerIP
	}
	if a.ConnBurstPerIP == 0 {
		a.ConnBurstPerIP = DefaultConnBurstPerIP
	}
	if a.Exempt == nil {
		a.Exempt = DefaultExempt()
	}
	a.Exempt = append([]netip.Prefix(nil), a.Exempt...)
	a.TrustedProxies = append([]netip.Prefix(nil), a.TrustedProxies...)
	a.AllowedHosts = append([]string(nil), a.AllowedHosts...)
	return a
}

// DefaultExempt are the addresses MaxConnsPerIP does not apply to by
// default: loopback, RFC 1918 and IPv6 unique local addresses.
func DefaultExempt() []netip.Prefix {
	var p []netip.Prefix
	for _, s := range []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"} {
		p = append(p, netip.MustParsePrefix(s))
	}
	return p
}

// LoopbackHosts are the Host names serve allows by default when it listens
// on a loopback address.
var LoopbackHosts = []string{"localhost", "*.localhost", "127.0.0.1", "::1"}

// admission counts the open connections, in all and per client address.
type admission struct {
	cfg   Admission
	open  atomic.Int64
	mu    sync.Mutex
	perIP map[netip.Addr]int
	rates map[netip.Addr]*rate.Limiter // handshakes per address, see sweep
}

func newAdmission(cfg Admission) *admission {
	return &admission{cfg: cfg, perIP: make(map[netip.Addr]int), rates: make(map[netip.Addr]*rate.Limiter)}
}

// allowHandshake takes a handshake from ip's rate. Called with a.mu held.
func (a *admission) allowHandshakeLocked(ip netip.Addr) bool {
	if a.cfg.ConnRatePerIP < 0 {
		return true
	}
	l := a.rates[ip]
	if l == nil {
		l = limiter(a.cfg.ConnRatePerIP, a.cfg.ConnBurstPerIP)
		a.rates[ip] = l
	}
	return l.Allow()
}

// sweep forgets the handshake rates of addresses that have earned back
// their whole burst: they would start afresh anyway. The ping loop calls
// it every tick, which bounds the map by the addresses that connected in
// the last burst/rate seconds.
func (a *admission) sweep(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, l := range a.rates {
		if l.TokensAt(now) >= float64(l.Burst()) {
			delete(a.rates, ip)
		}
	}
}

// clientKey is what per-address limits count by: the address, or the /64
// of an IPv6 address (one subscriber's usual allocation).
func clientKey(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return ip
}

// admit decides on a handshake. When it returns a release function the
// connection is counted until release is called; otherwise it has
// answered the request.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	a := s.admission
	if !a.hostAllowed(r.Host) {
		s.metrics.Refused.WithLabelValues(metrics.RefusedHost).Inc()
		http.Error(w, "host not allowed", http.StatusForbidden)
		return nil, false
	}
	if n := a.open.Add(1); a.cfg.MaxConnections > 0 && n > int64(a.cfg.MaxConnections) {
		a.open.Add(-1)
		s.refuseBusy(w, metrics.RefusedMaxConns, "too many connections")
		return nil, false
	}
	addr, counted := a.clientAddr(r), false
	ip := clientKey(addr)
	if ip.IsValid() && !inAny(a.cfg.Exempt, addr) {
		a.mu.Lock()
		reason, msg := "", ""
		switch {
		case a.cfg.MaxConnsPerIP > 0 && a.perIP[ip] >= a.cfg.MaxConnsPerIP:
			reason, msg = metrics.RefusedMaxConnsIP, "too many connections from "+addr.String()
		case !a.allowHandshakeLocked(ip):
			reason, msg = metrics.RefusedConnRateIP, "connecting too fast from "+addr.String()
		}
		if reason != "" {
			a.mu.Unlock()
			a.open.Add(-1)
			s.refuseBusy(w, reason, msg)
			return nil, false
		}
		a.perIP[ip]++
		a.mu.Unlock()
		counted = true
	}
	return func() {
		a.open.Add(-1)
		if counted {
			a.mu.Lock()
			if a.perIP[ip]--; a.perIP[ip] <= 0 {
				delete(a.perIP, ip)
			}
			a.mu.Unlock()
		}
	}, true
}

// refuseBusy answers a handshake refused for load with 503, before any
// upgrade, and logs it within the budget of client-caused lines.
func (s *Server) refuseBusy(w http.ResponseWriter, reason, msg string) {
	s.metrics.Refused.WithLabelValues(reason).Inc()
	if s.clientLogs.Allow() {
		s.log.Warn("connection refused", "reason", reason, "detail", msg)
	} else {
		s.metrics.LogsSuppressed.Inc()
	}
	w.Header().Set("Retry-After", "5")
	http.Error(w, msg, http.StatusServiceUnavailable)
}

// clientAddr is the client's address: the peer's, or, when the peer is a
// trusted proxy, the rightmost X-Forwarded-For address that is not one.
func (a *admission) clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	ip := ap.Addr().Unmap()
	if !inAny(a.cfg.TrustedProxies, ip) {
		return ip
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return ip // a malformed hop: trust nothing before it
		}
		if hop = hop.Unmap(); !inAny(a.cfg.TrustedProxies, hop) {
			return hop
		}
	}
	return ip
}

func inAny(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// hostAllowed reports whether a Host header value names an allowed host.
func (a *admission) hostAllowed(hostport string) bool {
	if len(a.cfg.AllowedHosts) == 0 {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	for _, allowed := range a.cfg.AllowedHosts {
		allowed = strings.ToLower(allowed)
		if host == allowed || strings.HasPrefix(allowed, "*.") && strings.HasSuffix(host, allowed[1:]) {
			return true
		}
	}
	return false
}

// LimitListener returns ln keeping at most MaxConnections + HTTPHeadroom
// accepted connections open: beyond that it closes new ones at once,
// counted as refused "sockets". It bounds the descriptors a flood of
// sockets (upgraded or not, such as handshakes sent slowly) can take from
// the rest of the process: the embedded NATS server's agents and files.
func (s *Server) LimitListener(ln net.Listener) net.Listener {
	n := s.cfg.Admission.MaxConnections
	if n <= 0 {
		return ln
	}
	return &limitListener{Listener: ln, max: int64(n + HTTPHeadroom), refused: func() {
		s.metrics.Refused.WithLabelValues(metrics.RefusedSockets).Inc()
	}}
}

type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused func()
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		c.Close()
		if l.refused != nil {
			l.refused()
		}
	}
}

type limitConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *limitConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
	}
	return c.Conn.Close()
}

// ParsePrefixes reads addresses and CIDR prefixes ("10.0.0.0/8", "::1").
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range list {
		for _, s := range strings.Split(item, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			if p, err := netip.ParsePrefix(s); err == nil {
				out = append(out, p.Masked())
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, &net.ParseError{Type: "IP address or CIDR prefix", Text: strconv.Quote(s)}
			}
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
		}
	}
	return out, nil
}
