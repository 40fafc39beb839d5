package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds how long a sidecar may take to log its ready line.
	readyTimeout = 30 * time.Second
	// stopTimeout bounds how long a sidecar may take to exit after SIGTERM.
	stopTimeout = 20 * time.Second
	// logTail is how many sidecar log lines a failing test prints.
	logTail = 300
)

// sidecarConfig is how one sidecar process is started. The zero value runs
// `threadbus serve` on loopback with OS-chosen ports and a fresh data dir.
type sidecarConfig struct {
	// DataDir is --data-dir. By default, a new t.TempDir().
	DataDir string
	// Args are extra arguments after the defaults, such as "--replay-grace", "1s".
	Args []string
	// Env are extra KEY=VALUE variables for the process.
	Env []string
}

// sidecar is one running threadbus process. Its methods are safe for
// concurrent use.
type sidecar struct {
	name     string
	DataDir  string
	HTTPAddr string // host:port of --listen
	NATSURL  string // nats://host:port of the embedded server

	cmd    *exec.Cmd
	logs   *lineLog
	exited chan struct{} // closed once the process has exited and its log is read
	err    error         // cmd.Wait's result; read after exited is closed
}

var (
	readyLine = regexp.MustCompile(`msg="?threadbus ready"?(\s|$)`)
	attrHTTP  = regexp.MustCompile(`(?:^|\s)http="?([^"\s]+)"?`)
	attrNATS  = regexp.MustCompile(`(?:^|\s)nats="?([^"\s]+)"?`)
)

// startSidecar starts threadbus serve and waits for its ready line. The
// process is stopped (SIGKILL if still running) when the test ends; its log
// is printed if the test failed.
func startSidecar(t testing.TB, cfg sidecarConfig) *sidecar {
	t.Helper()
	s, ready, start := launchSidecar(t, cfg)
	s.waitReady(t, ready, start)
	return s
}

// launchSidecar starts threadbus serve; waitReady waits for its ready line.
// Sidecars that form a cluster of their embedded servers are launched
// together: none is ready before the cluster has a leader.
func launchSidecar(t testing.TB, cfg sidecarConfig) (*sidecar, <-chan [2]string, time.Time) {
	t.Helper()
	if err := trackSourcesOnce(); err != nil {
		t.Fatalf("track the sources of the binary: %v", err)
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	args := []string{"serve",
		"--listen", "127.0.0.1:0",
		"--nats-listen", "127.0.0.1:0",
		"--data-dir", cfg.DataDir,
	}
	args = append(args, cfg.Args...)

	s := &sidecar{
		name:    fmt.Sprintf("sidecar[%s]", strings.Join(cfg.Args, " ")),
		DataDir: cfg.DataDir,
		logs:    &lineLog{},
		exited:  make(chan struct{}),
	}
	s.cmd = exec.Command(binPath, args...)
	s.cmd.Env = append(hermeticEnv(), cfg.Env...)
	s.cmd.Stdout = io.Discard
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start %s %v: %v", binPath, args, err)
	}

	ready := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			s.logs.add(line)
			if !found && readyLine.MatchString(line) {
				found = true
				var h, n string
				if m := attrHTTP.FindStringSubmatch(line); m != nil {
					h = m[1]
				}
				if m := attrNATS.FindStringSubmatch(line); m != nil {
					n = m[1]
				}
				ready <- [2]string{h, n}
			}
		}
		// Drain whatever the scanner refused (an over-long line) so the
		// process never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, stderr)
		s.err = s.cmd.Wait()
		close(s.exited)
	}()

	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() || os.Getenv("E2E_SIDECAR_LOG") != "" {
			t.Logf("%s log (last %d lines):\n%s", s.name, logTail, s.logs.tail(logTail))
		}
	})

	return s, ready, start
}

func (s *sidecar) waitReady(t testing.TB, ready <-chan [2]string, start time.Time) {
	t.Helper()
	select {
	case addrs := <-ready:
		s.HTTPAddr, s.NATSURL = addrs[0], addrs[1]
		if s.HTTPAddr == "" || !strings.HasPrefix(s.NATSURL, "nats://") {
			t.Fatalf("ready line lacks http=host:port or nats=nats://host:port; log:\n%s", s.logs.tail(logTail))
		}
		if !strings.HasPrefix(s.HTTPAddr, "127.0.0.1:") || !strings.HasPrefix(s.NATSURL, "nats://127.0.0.1:") {
			t.Fatalf("sidecar listens beyond loopback: http=%s nats=%s", s.HTTPAddr, s.NATSURL)
		}
	case <-s.exited:
		t.Fatalf("threadbus exited before it was ready (%v); log:\n%s", s.err, s.logs.tail(logTail))
	case <-time.After(readyTimeout):
		t.Fatalf("threadbus not ready after %v; log:\n%s", readyTimeout, s.logs.tail(logTail))
	}
	t.Logf("%s ready in %v: http=%s nats=%s data=%s", s.name, time.Since(start).Round(time.Millisecond), s.HTTPAddr, s.NATSURL, s.DataDir)
}

// kill sends SIGKILL and waits for the process to end.
func (s *sidecar) kill() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// stop sends SIGTERM and waits for the process to exit. It fails the test if
// the process does not exit within stopTimeout or exits with a non-zero code.
func (s *sidecar) stop(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("SIGTERM: %v", err)
	}
	start := time.Now()
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
		t.Fatalf("threadbus did not exit within %v of SIGTERM", stopTimeout)
	}
	if s.err != nil {
		t.Fatalf("threadbus exited after SIGTERM with %v, want exit status 0", s.err)
	}
	t.Logf("%s stopped by SIGTERM in %v, exit status 0", s.name, time.Since(start).Round(time.Millisecond))
}

// wsURL returns the WebSocket URL of /ws with the given raw query ("" for none).
func (s *sidecar) wsURL(query string) string {
	u := "ws://" + s.HTTPAddr + "/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

// hermeticEnv is the test's environment without variables that would change
// how threadbus or its NATS client behave.
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

// lineLog keeps a process's log lines.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) add(line string) {
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
}

func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := l.lines
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// grep returns the log lines that contain every one of words.
func (l *lineLog) grep(words ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range l.lines {
		for _, w := range words {
			if !strings.Contains(line, w) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}
