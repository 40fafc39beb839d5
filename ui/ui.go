// Package ui serves the thread viewer: a page at / that connects to the
// sidecar's /ws with the JavaScript client, binds the thread a user types and
// shows thread_bound, the replayed and live events with their seq, and the
// connection's states and reconnects. It is how a newcomer sees threadbus
// work; `threadbus serve --ui=false` leaves it out.
//
// Everything is embedded: the page and its script from this folder, the
// client from package jsclient (the npm package's own file). Nothing is
// loaded from elsewhere, and the page keeps a token only in its memory.
package ui

import (
	"embed"
	"net/http"

	jsclient "github.com/threadbus/threadbus/clients/js"
)

//go:embed index.html viewer.js viewer.css
var files embed.FS

// contentSecurityPolicy allows the page its own scripts, styles and
// WebSocket, and nothing else: no inline script, no other origin.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Wrap returns a handler that serves the viewer at / and its files under
// /ui/, and passes every other request to next (the sidecar's handler).
func Wrap(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", next)
	mux.Handle("GET /{$}", asset("text/html; charset=utf-8", mustRead("index.html")))
	mux.Handle("GET /ui/viewer.js", asset("text/javascript; charset=utf-8", mustRead("viewer.js")))
	mux.Handle("GET /ui/viewer.css", asset("text/css; charset=utf-8", mustRead("viewer.css")))
	mux.Handle("GET /ui/threadbus.js", asset("text/javascript; charset=utf-8", jsclient.Source))
	return mux
}

func mustRead(name string) []byte {
	b, err := files.ReadFile(name)
	if err != nil {
		panic("ui: " + name + " is not embedded: " + err.Error())
	}
	return b
}

func asset(contentType string, body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("Referrer-Policy", "no-referrer")
		_, _ = w.Write(body)
	})
}
