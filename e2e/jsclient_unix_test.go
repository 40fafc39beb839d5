//go:build unix

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// jsSuiteTimeout bounds the whole Node suite; it takes about 10 s here.
const jsSuiteTimeout = 3 * time.Minute

// TestJSClient runs the JavaScript client's tests (clients/js/test) with
// Node's test runner against the binary TestMain built: they start their own
// sidecars (restarts, SIGSTOP, small queues, short retention) and publish
// through the embedded NATS server. Node's output is the failure message.
func TestJSClient(t *testing.T) {
	node := lookPathOrFail(t, "node", "Node.js (apt-get install nodejs) runs the JavaScript client's tests")
	if v, err := exec.Command(node, "--version").Output(); err != nil || !nodeAtLeast20(string(v)) {
		t.Fatalf("node --version: %q (%v): the client and its tests need Node.js 20 or later", v, err)
	}
	files, err := filepath.Glob("../clients/js/test/*.test.js")
	if err != nil || len(files) == 0 {
		t.Fatalf("no JavaScript tests under clients/js/test (%v)", err)
	}
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), jsSuiteTimeout)
	defer cancel()
	// Node 20 has the standard WebSocket (undici's) behind a flag.
	args := append([]string{"--experimental-websocket", "--test", "--test-concurrency=2", "--test-timeout=120000"}, files...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = "../clients/js/test"
	cmd.Env = append(hermeticEnv(), "THREADBUS_BIN="+binPath)
	// Its own process group, so a timeout also ends the sidecars it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	if err != nil {
		t.Fatalf("node --test %s: %v after %v\n%s", strings.Join(files, " "), err, time.Since(start).Round(time.Millisecond), out.String())
	}
	// The figures the tests measured, and the summary.
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "# ") && !strings.HasPrefix(line, "# Subtest") {
			t.Log(strings.TrimPrefix(line, "# "))
		}
	}
	t.Logf("node --test: %d files in %v", len(files), time.Since(start).Round(time.Millisecond))
}

// lookPathOrFail finds a program the test needs. Without it the test fails
// under CI (CI=true; .ci/run installs it) and is skipped elsewhere.
func lookPathOrFail(t *testing.T, name, why string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found under CI: %s", name, why)
	}
	t.Skipf("%s not found (%v): %s; this test fails instead of skipping under CI=true", name, err, why)
	return ""
}

// nodeAtLeast20 reports whether `node --version` printed v20 or later.
func nodeAtLeast20(v string) bool {
	major, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(v), "v"), ".")
	n, err := strconv.Atoi(major)
	return err == nil && n >= 20
}
