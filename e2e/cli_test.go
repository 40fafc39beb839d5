package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// cliTimeout bounds one run of a short operator command.
const cliTimeout = 30 * time.Second

// cliResult is how one operator command ended.
type cliResult struct {
	Args   []string
	Stdout string
	Stderr string
	Code   int // exit status
}

func (r cliResult) String() string {
	return fmt.Sprintf("threadbus %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// cli runs the threadbus binary with args against natsURL (through the
// NATS_URL environment variable; "" sets none) and waits for it to exit.
func cli(t testing.TB, natsURL string, args ...string) cliResult {
	t.Helper()
	return cliStdin(t, natsURL, "", args...)
}

// cliStdin is cli with stdin.
func cliStdin(t testing.TB, natsURL, stdin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = cliEnv(natsURL)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{Args: args, Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.Code = ee.ExitCode()
	default:
		t.Fatalf("threadbus %s: %v (within %v)\n%s", strings.Join(args, " "), err, cliTimeout, r)
	}
	return r
}

// cliOK runs a command that must succeed and write nothing on stderr.
func cliOK(t testing.TB, natsURL string, args ...string) cliResult {
	t.Helper()
	r := cli(t, natsURL, args...)
	if r.Code != 0 || r.Stderr != "" {
		t.Fatalf("want exit 0 and no stderr; %s", r)
	}
	return r
}

// cliFails runs a command that must fail the way every operator command
// fails: exit status 1, nothing on stdout, one line on stderr that starts
// with "threadbus: " and contains every one of want.
func cliFails(t testing.TB, natsURL string, args []string, want ...string) cliResult {
	t.Helper()
	r := cli(t, natsURL, args...)
	cliCheckFailure(t, r, want...)
	return r
}

func cliCheckFailure(t testing.TB, r cliResult, want ...string) {
	t.Helper()
	if r.Code != 1 || r.Stdout != "" || !strings.HasPrefix(r.Stderr, "threadbus: ") ||
		strings.Count(r.Stderr, "\n") != 1 || !strings.HasSuffix(r.Stderr, "\n") {
		t.Errorf("want exit 1, nothing on stdout, one line on stderr starting with \"threadbus: \"; %s", r)
		return
	}
	for _, w := range want {
		if !strings.Contains(r.Stderr, w) {
			t.Errorf("stderr %q lacks %q (threadbus %s)", r.Stderr, w, strings.Join(r.Args, " "))
		}
	}
}

func cliEnv(natsURL string) []string {
	env := hermeticEnv()
	if natsURL != "" {
		env = append(env, "NATS_URL="+natsURL)
	}
	return env
}

// cliProc is a long-running operator command (watch, tail --follow) whose
// stdout lines are collected as they come.
type cliProc struct {
	args   []string
	cmd    *exec.Cmd
	stdout *lineLog
	stderr cliBuffer
	exited chan struct{}
	err    error // cmd.Wait's result; read after exited is closed
}

// cliBuffer is a bytes.Buffer that a process may write while the test reads it.
type cliBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *cliBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *cliBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startCLI starts a command; it is killed at the end of the test if still running.
func startCLI(t testing.TB, natsURL string, args ...string) *cliProc {
	t.Helper()
	p := &cliProc{args: args, stdout: &lineLog{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binPath, args...)
	p.cmd.Env = cliEnv(natsURL)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start threadbus %v: %v", args, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			p.stdout.add(sc.Text())
		}
		_, _ = io.Copy(io.Discard, out)
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("threadbus %s stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), p.stdout.tail(logTail), p.stderr.String())
		}
	})
	return p
}

// waitLine waits until the command printed a line matching re and returns
// the first such line.
func (p *cliProc) waitLine(t testing.TB, timeout time.Duration, re *regexp.Regexp) string {
	t.Helper()
	var found string
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := waitUntil(ctx, func() bool {
		for _, l := range p.lines() {
			if re.MatchString(l) {
				found = l
				return true
			}
		}
		select {
		case <-p.exited:
			return true
		default:
			return false
		}
	})
	if found == "" {
		why := "timed out"
		if err == nil {
			why = fmt.Sprintf("exited (%v)", p.err)
		}
		t.Fatalf("threadbus %s printed no line matching %q: %s after %v\nstdout:\n%s\nstderr:\n%s",
			strings.Join(p.args, " "), re, why, timeout, strings.Join(p.lines(), "\n"), p.stderr.String())
	}
	return found
}

func (p *cliProc) lines() []string { return p.stdout.grep() }

// interrupt sends SIGINT, as Ctrl-C does, and fails unless the command then
// exits with status 0 and nothing on stderr.
func (p *cliProc) interrupt(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("SIGINT: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("threadbus %s did not exit within %v of SIGINT", strings.Join(p.args, " "), stopTimeout)
	}
	if p.err != nil || p.stderr.String() != "" {
		t.Errorf("threadbus %s after SIGINT: %v, stderr %q; want exit 0 and no stderr", strings.Join(p.args, " "), p.err, p.stderr.String())
	}
}

// cliStartNATS runs a NATS server with JetStream inside the test process, for
// tests that must kill a sidecar while NATS stays up.
func cliStartNATS(t testing.TB) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("embedded nats-server not ready")
	}
	return ns.ClientURL()
}

// cliUnusedNATSURL returns a loopback URL where nothing listens.
func cliUnusedNATSURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "nats://" + addr
}

// cliTable is an aligned table as the CLI prints it: a header and rows, each
// cell cut at the column where the header names it.
type cliTable struct {
	header string
	rows   []map[string]string
}

// cliParseTable reads lines as a table whose header holds cols, in order.
// Alignment is part of the check: a row whose cells do not start at their
// header's column reads as garbage and fails the comparisons that follow.
func cliParseTable(t testing.TB, lines []string, cols ...string) cliTable {
	t.Helper()
	if len(lines) == 0 {
		t.Fatalf("no table: want a header with %v", cols)
	}
	tb := cliTable{header: lines[0]}
	starts := make([]int, len(cols))
	for i, c := range cols {
		starts[i] = strings.Index(tb.header, c)
		if starts[i] < 0 || i > 0 && starts[i] <= starts[i-1] {
			t.Fatalf("header %q: want columns %v in order", tb.header, cols)
		}
	}
	for _, l := range lines[1:] {
		row := map[string]string{}
		for i, c := range cols {
			if starts[i] > len(l) {
				t.Fatalf("row %q is shorter than the header %q", l, tb.header)
			}
			end := len(l)
			if i+1 < len(cols) && starts[i+1] <= len(l) {
				end = starts[i+1]
			}
			cell := l[starts[i]:end]
			if i > 0 && starts[i] > 0 && l[starts[i]-1] != ' ' {
				t.Fatalf("row %q: column %s does not start where its header does: %q", l, c, tb.header)
			}
			row[c] = strings.TrimSpace(cell)
		}
		tb.rows = append(tb.rows, row)
	}
	return tb
}

// cliLines splits output into lines, without empty ones.
func cliLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}
