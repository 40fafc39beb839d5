package bench

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progressEvery is how often the progress line is written.
const progressEvery = time.Second

// progress writes a status line while a phase runs: rewritten in place on a
// terminal, one line per tick otherwise. A nil *progress writes nothing.
type progress struct {
	w   io.Writer
	tty bool
}

func newProgress(w io.Writer) *progress {
	if w == nil {
		return nil
	}
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

// start writes "label: status() (elapsed)" every progressEvery, from the
// first tick on (phases shorter than that print nothing), until the
// returned stop is called. stop waits for the writer goroutine.
func (p *progress) start(label string, status func() string) (stop func()) {
	if p == nil {
		return func() {}
	}
	began := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wrote := false
	wg.Go(func() {
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				if wrote && p.tty {
					fmt.Fprint(p.w, "\r\033[K")
				}
				return
			case <-tick.C:
				line := fmt.Sprintf("bench %s: %s (%.0fs)", label, status(), time.Since(began).Seconds())
				if p.tty {
					fmt.Fprintf(p.w, "\r\033[K%s", line)
				} else {
					fmt.Fprintln(p.w, line)
				}
				wrote = true
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}

// note writes one line at once, for a phase that begins.
func (p *progress) note(format string, args ...any) {
	if p == nil {
		return
	}
	fmt.Fprintf(p.w, "bench: "+format+"\n", args...)
}
