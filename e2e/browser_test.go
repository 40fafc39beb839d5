package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// browserTimeout bounds one wait on the page.
const browserTimeout = 30 * time.Second

// TestViewerInBrowser loads the viewer page that serve embeds into Debian's
// chromium (headless, driven by chromedp), binds a thread from the form and
// checks that the page shows every event the agent publishes, replayed and
// live, once each, across a restart of the sidecar on the same ports and data
// directory. E2E_SCREENSHOT=file.png saves what the page looked like.
func TestViewerInBrowser(t *testing.T) {
	t.Parallel()
	const tid = "browser_view"
	chromium := lookPathOrFail(t, "chromium", "Debian's chromium (apt-get install chromium) runs the viewer test")
	sc := startSidecar(t, sidecarConfig{})
	ag := newAgent(t, sc.NATSURL)
	before := ag.mustPublish(t, tid, 3) // replayed on bind

	ctx, jsErrors := newBrowser(t, chromium)
	page := &viewerPage{t: t, ctx: ctx}
	page.do(chromedp.Navigate("http://"+sc.HTTPAddr+"/"),
		chromedp.WaitVisible(chromedp.ID("thread")),
		chromedp.SendKeys(chromedp.ID("thread"), tid),
		chromedp.Click(chromedp.ID("bind")),
	)
	page.waitJS(fmt.Sprintf(`document.getElementById('bound-thread').textContent === %q`, tid), "thread_bound on the page")
	if got := page.text("bound-replayed"); got != "3" {
		t.Errorf("the page shows replayed %s, want 3", got)
	}
	live := ag.mustPublish(t, tid, 4)
	page.waitSeqs(append(slices.Clone(before), live...))

	// Restart on the same ports and data directory: the page sees 1012,
	// reconnects with since and epoch, and misses nothing.
	ag.close()
	sc.stop(t)
	page.waitJS(`document.getElementById('state').dataset.state !== 'connected'`, "the page to notice the restart")
	sc2 := startSidecar(t, sidecarConfig{DataDir: sc.DataDir, Args: []string{
		"--listen", sc.HTTPAddr, "--nats-listen", strings.TrimPrefix(sc.NATSURL, "nats://"),
	}})
	ag2 := newAgent(t, sc2.NATSURL)
	missed := ag2.mustPublish(t, tid, 3) // while the page may still be away
	page.waitJS(`document.getElementById('state').dataset.state === 'connected'`, "the page to reconnect")
	after := ag2.mustPublish(t, tid, 3)
	want := slices.Concat(before, live, missed, after)
	page.waitSeqs(want)
	if got := page.text("reconnects"); got != "1" {
		t.Errorf("the page counts %s reconnects, want 1", got)
	}
	if got := page.text("bound-recovered"); got != "true" {
		t.Errorf("after the restart the page shows recovered %s, want true", got)
	}
	logText := page.text("log")
	if !strings.Contains(logText, "close 1012") {
		t.Errorf("the connection log does not show the 1012 close:\n%s", logText)
	}

	if path := os.Getenv("E2E_SCREENSHOT"); path != "" {
		shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile(path, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of the viewer in %s", path)
	}
	if errs := jsErrors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}
}

// TestViewerWithToken: with --auth jwt the page without a token is refused
// (4401, terminal, said on the page), then binds with the token typed in its
// field, shows the events, and keeps the token nowhere but in that field.
func TestViewerWithToken(t *testing.T) {
	t.Parallel()
	const tid = "browser_auth"
	chromium := lookPathOrFail(t, "chromium", "Debian's chromium (apt-get install chromium) runs the viewer test")
	sc := startAuthSidecar(t, "--authz", "none")
	ag := newAgent(t, sc.NATSURL)
	tok := sc.token(t, "u-browser", time.Hour)

	ctx, jsErrors := newBrowser(t, chromium)
	page := &viewerPage{t: t, ctx: ctx}
	page.do(chromedp.Navigate("http://"+sc.HTTPAddr+"/"),
		chromedp.WaitVisible(chromedp.ID("thread")),
		chromedp.SendKeys(chromedp.ID("thread"), tid),
		chromedp.Click(chromedp.ID("bind")),
	)
	page.waitJS(`document.getElementById('state').dataset.state === 'closed'`, "the refusal without a token")
	if logText := page.text("log"); !strings.Contains(logText, "4401") {
		t.Errorf("the connection log does not show the 4401 close:\n%s", logText)
	}

	page.do(chromedp.SendKeys(chromedp.ID("token"), tok), chromedp.Click(chromedp.ID("bind")))
	page.waitJS(fmt.Sprintf(`document.getElementById('bound-thread').textContent === %q`, tid), "thread_bound with the token")
	page.waitSeqs(ag.mustPublish(t, tid, 3))

	kept, err := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf(`(() => {
		const tok = %q;
		const inStorage = (s) => Array.from({ length: s.length }, (_, i) => s.getItem(s.key(i))).some((v) => v.includes(tok));
		return inStorage(sessionStorage) || inStorage(localStorage) || document.cookie.includes(tok) ||
			location.href.includes(tok) || document.documentElement.outerHTML.includes(tok);
	})()`, tok)))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if kept {
		t.Error("the page keeps the token beyond its field (storage, cookie, URL or markup)")
	}
	if errs := jsErrors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}
}

// newBrowser starts a headless chromium with a fresh profile, stopped when
// the test ends, and returns its tab's context and a function that returns
// the page's uncaught exceptions and console errors so far.
func newBrowser(t *testing.T, execPath string) (context.Context, func() []string) {
	t.Helper()
	profile := t.TempDir()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(execPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancelCtx := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	var mu sync.Mutex
	var errs []string
	err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			errs = append(errs, (&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error())
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, string(a.Value))
				}
				errs = append(errs, "console.error: "+strings.Join(parts, " "))
			}
		}
	})
	// Listen started the browser, with a context that carries no timeout:
	// a timeout there would stop the whole browser.
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(errs)
	}
}

// viewerPage drives the viewer in one tab.
type viewerPage struct {
	t   *testing.T
	ctx context.Context
}

func (p *viewerPage) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("browser: %v", err)
	}
}

func (p *viewerPage) text(id string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.getElementById(%q).textContent`, id)))
	if err != nil {
		p.t.Fatalf("browser: text of #%s: %v", id, err)
	}
	return s
}

// waitJS polls a JavaScript condition until it is true.
func (p *viewerPage) waitJS(cond, what string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond)); err != nil {
		p.t.Fatalf("browser: waiting for %s: %v\nconnection log on the page:\n%s", what, err, p.text("log"))
	}
}

// waitSeqs waits until the page shows exactly the events want, once each.
func (p *viewerPage) waitSeqs(want []uint64) {
	p.t.Helper()
	deadline := time.Now().Add(browserTimeout)
	var got []uint64
	for {
		ctx, cancel := context.WithTimeout(p.ctx, browserTimeout)
		rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]uint64](`[...document.querySelectorAll('#events tr[data-seq]')].map((r) => Number(r.dataset.seq)).reverse()`))
		cancel()
		if err != nil {
			p.t.Fatalf("browser: read the events: %v", err)
		}
		got = rows
		if len(got) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the page; the condition is checked again
	}
	if !slices.Equal(got, want) {
		p.t.Fatalf("the page shows seqs %v, want %v\nconnection log on the page:\n%s", got, want, p.text("log"))
	}
}

// The viewer is served by default and left out with --ui=false; the
// sidecar's own endpoints answer either way.
func TestViewerFlag(t *testing.T) {
	t.Parallel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	status := func(sc *sidecar, path string) int {
		t.Helper()
		resp, err := hc.Get("http://" + sc.HTTPAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	on := startSidecar(t, sidecarConfig{})
	off := startSidecar(t, sidecarConfig{Args: []string{"--ui=false"}})
	for _, c := range []struct {
		sc   *sidecar
		path string
		want int
	}{
		{on, "/", http.StatusOK},
		{on, "/ui/threadbus.js", http.StatusOK},
		{on, "/healthz", http.StatusOK},
		{off, "/", http.StatusNotFound},
		{off, "/ui/threadbus.js", http.StatusNotFound},
		{off, "/healthz", http.StatusOK},
	} {
		if got := status(c.sc, c.path); got != c.want {
			t.Errorf("%s GET %s: %d, want %d", c.sc.name, c.path, got, c.want)
		}
	}
}
