package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// maxHTTPReply bounds the reply body read from the HTTP hook.
const maxHTTPReply = 64 << 10

// HTTPAuthorizer POSTs the hook request as JSON to a URL. It is safe for
// concurrent use.
type HTTPAuthorizer struct {
	url     string
	shown   string // url without a password, for errors
	client  *http.Client
	timeout time.Duration
}

var _ Authorizer = (*HTTPAuthorizer)(nil)

// NewHTTPAuthorizer posts to rawURL (http or https) with client (by
// default, a client of its own), waiting at most timeout for each answer
// (by default, DefaultAuthzTimeout).
func NewHTTPAuthorizer(rawURL string, client *http.Client, timeout time.Duration) (*HTTPAuthorizer, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("authorization URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("authorization URL %s: want http://host/... or https://host/...", u.Redacted())
	}
	if client == nil {
		client = &http.Client{}
	}
	if timeout <= 0 {
		timeout = DefaultAuthzTimeout
	}
	return &HTTPAuthorizer{url: rawURL, shown: u.Redacted(), client: client, timeout: timeout}, nil
}

// Authorize POSTs req and reads the decision from a 2xx answer. Anything
// else (no answer in time, another status, a body that is not a decision)
// is an error wrapping ErrUnavailable.
func (a *HTTPAuthorizer) Authorize(ctx context.Context, req Request) (Decision, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Decision{}, fmt.Errorf("authorize: %w: encode request: %w", ErrUnavailable, err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(body))
	if err != nil {
		return Decision{}, fmt.Errorf("authorize: %w: %s: %w", ErrUnavailable, a.shown, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")
	resp, err := a.client.Do(hreq)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return Decision{}, fmt.Errorf("authorize: %w: no answer from %s within %s", ErrUnavailable, a.shown, a.timeout)
		}
		// *url.Error repeats the URL, password included: keep only the cause.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return Decision{}, fmt.Errorf("authorize: %w: POST %s: %w", ErrUnavailable, a.shown, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPReply+1))
	switch {
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return Decision{}, fmt.Errorf("authorize: %w: %s answered %s", ErrUnavailable, a.shown, resp.Status)
	case err != nil:
		return Decision{}, fmt.Errorf("authorize: %w: read the answer of %s: %w", ErrUnavailable, a.shown, err)
	case len(data) > maxHTTPReply:
		return Decision{}, fmt.Errorf("authorize: %w: the answer of %s is over %d bytes", ErrUnavailable, a.shown, maxHTTPReply)
	}
	d, err := parseReply(data)
	if err != nil {
		return Decision{}, fmt.Errorf("authorize: %w: %s: %w", ErrUnavailable, a.shown, err)
	}
	return d, nil
}
