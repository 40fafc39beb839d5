package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// binPath is the threadbus binary TestMain built; the scenarios start it.
var binPath string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "threadbus-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "threadbus")
	cmd := exec.Command("go", "build", "-o", binPath, "./cmd/threadbus")
	cmd.Dir = ".." // the module root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: go build ./cmd/threadbus: %v\n%s", err, out)
		return 2
	}
	code := m.Run()
	// Every client, subscription and process a scenario started must be
	// gone once Run returns.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	return code
}
