package ui

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func get(t *testing.T, h http.Handler, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Result()
}

// The page and every file it links to are served, each with its type and a
// policy that forbids anything from elsewhere.
func TestPageAndItsFiles(t *testing.T) {
	h := Wrap(http.NotFoundHandler())
	res := get(t, h, "/")
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	page, _ := io.ReadAll(res.Body)
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllSubmatch(page, -1)
	if len(refs) < 2 {
		t.Fatalf("the page links %d files, want its script and style", len(refs))
	}
	viewer, _ := io.ReadAll(get(t, h, "/ui/viewer.js").Body)
	imports := regexp.MustCompile(`from '([^']+)'`).FindAllSubmatch(viewer, -1)
	if len(imports) == 0 {
		t.Fatal("viewer.js imports nothing: where is the client?")
	}
	for _, m := range append(refs, imports...) {
		ref := string(m[1])
		if !strings.HasPrefix(ref, "/ui/") {
			t.Errorf("the page refers to %q: everything must come from /ui/ of the sidecar", ref)
			continue
		}
		res := get(t, h, ref)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", ref, res.StatusCode)
		}
		if !strings.Contains(res.Header.Get("Content-Security-Policy"), "default-src 'none'") {
			t.Errorf("GET %s: no content security policy", ref)
		}
	}
}

// The page runs the client the npm package ships, byte for byte.
func TestServesThePackagedClient(t *testing.T) {
	want, err := os.ReadFile("../clients/js/threadbus.js")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(get(t, Wrap(http.NotFoundHandler()), "/ui/threadbus.js").Body)
	if !bytes.Equal(got, want) {
		t.Fatal("/ui/threadbus.js differs from clients/js/threadbus.js")
	}
}

// Everything but the viewer reaches the sidecar's handler.
func TestPassesTheRestOn(t *testing.T) {
	var seen []string
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.Path)
		w.WriteHeader(http.StatusTeapot)
	})
	h := Wrap(next)
	for _, p := range []string{"/ws", "/healthz", "/metrics", "/nothing"} {
		if res := get(t, h, p); res.StatusCode != http.StatusTeapot {
			t.Errorf("GET %s: %d, want the sidecar's answer", p, res.StatusCode)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	if len(seen) != 5 {
		t.Errorf("the sidecar saw %v", seen)
	}
}
