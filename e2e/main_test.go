// Package e2e tests the real threadbus binary end to end: TestMain builds
// ./cmd/threadbus once, every test starts its own sidecar process (embedded
// NATS server, loopback ports chosen by the OS, data in t.TempDir()) and drives
// it with real WebSocket clients and a nats.go client acting as the agent.
//
// The package imports nothing from threadbus: it tests the wire contract in
// BRIEF.md ("Contract (v1)"), the way any WebSocket or NATS client would.
//
// Environment:
//   - E2E_SEED=N replays the random choices of a failed run (every test logs
//     its seed).
//   - E2E_RACE=1 builds the binary with -race, so data races inside the
//     sidecar under real load fail the test that triggers them.
//   - E2E_SIDECAR_LOG=1 prints every sidecar's log even when its test passes.
package e2e

import (
	"flag"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binPath is the threadbus binary TestMain built.
var binPath string

// baseSeed seeds every test's randomness; see newRand.
var baseSeed uint64

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	baseSeed = uint64(time.Now().UnixNano())
	if s := os.Getenv("E2E_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: E2E_SEED=%q: %v\n", s, err)
			return 2
		}
		baseSeed = v
	}
	fmt.Fprintf(os.Stderr, "e2e: seed %d (rerun with E2E_SEED=%d)\n", baseSeed, baseSeed)

	dir, err := os.MkdirTemp("", "threadbus-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 2
	}
	defer os.RemoveAll(dir)

	binPath = filepath.Join(dir, "threadbus")
	if err := build(binPath); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 2
	}

	code := m.Run()
	// Every sidecar, WebSocket and NATS connection a test opened is closed by
	// its cleanups; anything still running now is a leak in the harness or
	// the tests. goleak retries for a while, so goroutines that are merely
	// finishing do not count. Nothing is ignored.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	return code
}

func build(out string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	args := []string{"build", "-o", out}
	if os.Getenv("E2E_RACE") != "" {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/threadbus")
	cmd := exec.Command(gobin, args...)
	cmd.Dir = ".." // the module root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %v\n%s", args, err, b)
	}
	return nil
}

// trackSources opens every file the binary is built from. This package
// imports nothing of threadbus, and go test caches a passing run as long as
// the test binary and the files the tests opened are unchanged: without this,
// a change to the sidecar alone would be answered with a cached pass. Only
// what is opened while tests run counts (not in TestMain before m.Run), so
// startSidecar calls it, once.
var trackSourcesOnce = sync.OnceValue(func() error { return trackSources("..") })

func trackSources(root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		// The viewer and the JavaScript client (embedded in the binary, and
		// the client's tests that TestJSClient runs) count too.
		if strings.HasSuffix(name, ".go") || name == "go.mod" || name == "go.sum" ||
			strings.HasSuffix(name, ".js") || strings.HasSuffix(name, ".html") || strings.HasSuffix(name, ".css") {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			return f.Close()
		}
		return nil
	})
}

// newRand returns the test's random source and logs its seed. The seed
// depends on the base seed and the test name only, so E2E_SEED reproduces
// each test's choices whatever order the tests run in. A *rand.Rand is not
// safe for concurrent use: give each goroutine its own via childRand.
func newRand(t testing.TB) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	t.Logf("seed %d (E2E_SEED=%d)", baseSeed, baseSeed)
	return rand.New(rand.NewPCG(baseSeed, h.Sum64()))
}

func childRand(r *rand.Rand) *rand.Rand {
	return rand.New(rand.NewPCG(r.Uint64(), r.Uint64()))
}
