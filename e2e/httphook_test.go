package e2e

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// newHTTPHook serves h on loopback for the test and returns its URL.
func newHTTPHook(t testing.TB, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
