package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// target is the sidecar under test, started by Run or named by the Config.
type target struct {
	addrs
	pid  int      // 0: read memory and CPU from /metrics
	proc *process // nil unless Run started it
	hc   *http.Client
}

// wsURL is the sidecar's /ws with a raw query ("" for none).
func (t *target) wsURL(query string) string {
	u := "ws://" + t.HTTP + "/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

// describe names the sidecar for the report.
func (t *target) describe() string {
	if t.proc != nil {
		return fmt.Sprintf("sidecar pid %d started by the bench, http %s, nats %s", t.pid, t.HTTP, t.NATS)
	}
	return fmt.Sprintf("running sidecar at http %s, nats %s", t.HTTP, t.NATS)
}

// clockTicks is the unit of utime and stime in /proc/<pid>/stat (USER_HZ),
// 100 on every Linux platform Go supports.
const clockTicks = 100

// usage is a sidecar's resident memory and CPU time at one moment.
type usage struct {
	RSS uint64        // bytes
	CPU time.Duration // user + system
}

// usage reads the sidecar's RSS and CPU time.
func (t *target) usage(ctx context.Context) (usage, error) {
	if t.pid != 0 {
		return procUsage(t.pid)
	}
	m, err := t.scrape(ctx)
	if err != nil {
		return usage{}, err
	}
	rss, ok1 := m["process_resident_memory_bytes"]
	cpu, ok2 := m["process_cpu_seconds_total"]
	if !ok1 || !ok2 {
		return usage{}, fmt.Errorf("sidecar /metrics has no process_resident_memory_bytes or process_cpu_seconds_total")
	}
	return usage{RSS: uint64(rss), CPU: time.Duration(cpu * float64(time.Second))}, nil
}

// procUsage reads VmRSS from /proc/<pid>/status and utime+stime from
// /proc/<pid>/stat.
func procUsage(pid int) (usage, error) {
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("sidecar memory: %w", err)
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "123456 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseUint(f[0], 10, 64)
				if err == nil {
					u.RSS = kb << 10
				}
			}
		}
	}
	if u.RSS == 0 {
		return u, fmt.Errorf("sidecar memory: no VmRSS in /proc/%d/status", pid)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("sidecar cpu: %w", err)
	}
	// The command name (field 2) may hold spaces: fields count from the ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return u, fmt.Errorf("sidecar cpu: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return u, fmt.Errorf("sidecar cpu: short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return u, fmt.Errorf("sidecar cpu: malformed /proc/%d/stat", pid)
	}
	u.CPU = time.Duration(utime+stime) * time.Second / clockTicks
	return u, nil
}

// metricSet maps a Prometheus series, as written in the text format
// (`name` or `name{label="value"}`), to its value.
type metricSet map[string]float64

// scrape reads the sidecar's /metrics.
func (t *target) scrape(ctx context.Context) (metricSet, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.HTTP+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape sidecar metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape sidecar metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format, keeping samples only.
func parseMetrics(r io.Reader) (metricSet, error) {
	m := make(metricSet)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// The value follows the last space outside the labels; label values
		// may hold spaces, so split after the closing brace when there is one.
		head, rest := line, ""
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			head, rest = line[:i+1], strings.TrimSpace(line[i+1:])
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			head, rest = line[:i], strings.TrimSpace(line[i+1:])
		}
		val, _, _ := strings.Cut(rest, " ") // an optional timestamp follows
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		m[head] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read sidecar metrics: %w", err)
	}
	return m, nil
}

// settledUsage waits until the sidecar's RSS stops moving (two readings
// settleStep apart within 1% or 256 KiB of each other), at most maxWait,
// and returns the last reading. Go returns freed memory to the OS slowly;
// a reading taken in the middle of that would be noise.
func (t *target) settledUsage(ctx context.Context, maxWait time.Duration) (usage, error) {
	const settleStep = 500 * time.Millisecond
	deadline := time.Now().Add(maxWait)
	prev, err := t.usage(ctx)
	if err != nil {
		return prev, err
	}
	for time.Now().Before(deadline) {
		if err := sleep(ctx, settleStep); err != nil {
			return prev, err
		}
		cur, err := t.usage(ctx)
		if err != nil {
			return prev, err
		}
		d := int64(cur.RSS) - int64(prev.RSS)
		if d < 0 {
			d = -d
		}
		prev = cur
		if d <= 256<<10 || uint64(d)*100 <= cur.RSS {
			break
		}
	}
	return prev, nil
}

// waitConnsClosed waits until the sidecar counts at most n open
// connections, so that one phase's teardown does not run into the next.
func (t *target) waitConnsClosed(ctx context.Context, n int, maxWait time.Duration) error {
	deadline := time.Now().Add(maxWait)
	for {
		m, err := t.scrape(ctx)
		if err != nil {
			return err
		}
		open := m["threadbus_connections_open"]
		if open <= float64(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: sidecar still counts %.0f open connections %v after they were closed", ErrIncomplete, open, maxWait)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// sleep waits for d or until ctx is done. It paces polls of things that
// cannot notify (another process's memory), never synchronisation.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
