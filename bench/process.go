package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	readyTimeout = 30 * time.Second // a started sidecar logs its ready line
	stopTimeout  = 20 * time.Second // and exits after SIGTERM
	logTailLines = 40
)

// The lines of `threadbus serve`'s log that say where it listens.
var (
	readyLine  = regexp.MustCompile(`msg="?threadbus ready"?(\s|$)`)
	attrHTTP   = regexp.MustCompile(`(?:^|\s)http="?([^"\s]+)"?`)
	attrNATS   = regexp.MustCompile(`(?:^|\s)nats="?([^"\s]+)"?`)
	wsListener = regexp.MustCompile(`Listening for websocket clients on (wss?://[^"\s]+)`)
)

// process is a sidecar this package started: `threadbus serve` on loopback
// ports chosen by the OS, in a temporary data directory, with an embedded
// nats-server whose WebSocket listener serves the fan-out baseline.
type process struct {
	cmd     *exec.Cmd
	dataDir string
	addrs   addrs
	binary  string
	extra   []string
	copyLog io.Writer

	logMu sync.Mutex
	tail  []string // the last logTailLines lines

	exited chan struct{} // closed when the process has exited and its log is read
	err    error         // cmd.Wait's result, once exited is closed
}

// addrs are where a sidecar listens.
type addrs struct {
	HTTP   string // host:port of /ws and /metrics
	NATS   string // nats://host:port
	NATSWS string // ws://host:port of nats-server's WebSocket listener; may be empty
}

// natsConfig is the embedded server's configuration: loopback only, random
// ports, JetStream under dir, and a WebSocket listener without TLS.
func natsConfig(dir string) string {
	return fmt.Sprintf(`# written by threadbus bench
host: 127.0.0.1
port: -1
jetstream {
  store_dir: %s
}
websocket {
  host: 127.0.0.1
  port: -1
  no_tls: true
}
`, strconv.Quote(filepath.Join(dir, "jetstream")))
}

// startProcess starts binary serve and waits for its ready line. extra are
// more serve arguments; copyLog, when not nil, receives every log line.
func startProcess(ctx context.Context, binary string, extra []string, copyLog io.Writer) (*process, error) {
	dir, err := os.MkdirTemp("", "threadbus-bench-")
	if err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	return startProcessIn(ctx, dir, binary, extra, copyLog)
}

// startProcessIn is startProcess in the data directory dir, which it
// removes if the process does not start.
func startProcessIn(ctx context.Context, dir, binary string, extra []string, copyLog io.Writer) (*process, error) {
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(natsConfig(dir)), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	args := append([]string{"serve",
		"--listen", "127.0.0.1:0",
		"--nats-listen", "127.0.0.1:0",
		"--data-dir", dir,
		"--nats-config", conf,
		// The inbound scenario measures throughput: one connection sends
		// hundreds of frames as fast as it can, far over the default limits.
		"--frame-rate=-1", "--inbound-bytes-rate=-1",
	}, extra...)
	p := &process{dataDir: dir, binary: binary, extra: extra, copyLog: copyLog, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = hermeticEnv()
	p.cmd.Stdout = io.Discard
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start sidecar %s: %w", binary, err)
	}
	ready := make(chan addrs, 1)
	go p.readLog(stderr, copyLog, ready)

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case a := <-ready:
		p.addrs = a
		if !strings.HasPrefix(a.NATS, "nats://") || a.HTTP == "" {
			p.kill()
			return nil, fmt.Errorf("%w: ready line without http=host:port and nats=nats://host:port\n%s", ErrSidecar, p.logTail())
		}
		return p, nil
	case <-p.exited:
		p.cleanup()
		return nil, fmt.Errorf("%w: exited before it was ready (%v)\n%s", ErrSidecar, p.err, p.logTail())
	case <-timer.C:
		p.kill()
		return nil, fmt.Errorf("%w: not ready after %v\n%s", ErrSidecar, readyTimeout, p.logTail())
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	}
}

// readLog reads the process's log until it exits, reporting its addresses
// once the ready line appears. The WebSocket listener is logged before it.
func (p *process) readLog(r io.Reader, copyLog io.Writer, ready chan<- addrs) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var a addrs
	found := false
	for sc.Scan() {
		line := sc.Text()
		p.addLine(line)
		if copyLog != nil {
			fmt.Fprintln(copyLog, line)
		}
		if found {
			continue
		}
		if m := wsListener.FindStringSubmatch(line); m != nil {
			a.NATSWS = m[1]
		}
		if readyLine.MatchString(line) {
			found = true
			if m := attrHTTP.FindStringSubmatch(line); m != nil {
				a.HTTP = m[1]
			}
			if m := attrNATS.FindStringSubmatch(line); m != nil {
				a.NATS = m[1]
			}
			ready <- a
		}
	}
	_, _ = io.Copy(io.Discard, r) // an over-long line: never let the process block on its pipe
	p.err = p.cmd.Wait()
	close(p.exited)
}

func (p *process) addLine(line string) {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	if len(p.tail) == logTailLines {
		copy(p.tail, p.tail[1:])
		p.tail = p.tail[:logTailLines-1]
	}
	p.tail = append(p.tail, line)
}

func (p *process) logTail() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return "sidecar log (last lines):\n  " + strings.Join(p.tail, "\n  ")
}

// PID is the process id.
func (p *process) PID() int { return p.cmd.Process.Pid }

// stop sends SIGTERM and waits for the process to exit, then removes its
// data directory. A process that does not exit in time is killed.
func (p *process) stop() error {
	err := p.terminate()
	p.cleanup()
	return err
}

// restart stops the process, keeping its data directory, and starts a new
// one on it: a sidecar restart, whose new process has served nothing yet.
func (p *process) restart(ctx context.Context) (*process, error) {
	if err := p.terminate(); err != nil {
		p.cleanup()
		return nil, err
	}
	return startProcessIn(ctx, p.dataDir, p.binary, p.extra, p.copyLog)
}

// terminate sends SIGTERM and waits for the process to exit.
func (p *process) terminate() error {
	err := p.cmd.Process.Signal(syscall.SIGTERM)
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.kill()
		return fmt.Errorf("%w: SIGTERM: %v", ErrSidecar, err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%w: did not exit within %v of SIGTERM\n%s", ErrSidecar, stopTimeout, p.logTail())
	}
	if p.err != nil {
		return fmt.Errorf("%w: exited after SIGTERM with %v\n%s", ErrSidecar, p.err, p.logTail())
	}
	return nil
}

// kill ends the process at once and waits for it.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.cleanup()
}

func (p *process) cleanup() { os.RemoveAll(p.dataDir) }

// hermeticEnv is this process's environment without the variables that would
// configure the started sidecar behind the bench's back.
func hermeticEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "THREADBUS_") || strings.HasPrefix(kv, "NATS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
