package auth_test

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/threadbus/threadbus/auth"
)

const tok = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTQyIn0.c2lnbmF0dXJl"

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// request builds a handshake with the given Authorization header (none when
// empty), Sec-WebSocket-Protocol headers and query string.
func request(authz string, protocols []string, query string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/ws?"+query, nil)
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	for _, p := range protocols {
		r.Header.Add("Sec-WebSocket-Protocol", p)
	}
	return r
}

func TestTokenFromRequest(t *testing.T) {
	other := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.b3RoZXI"
	padded := base64.URLEncoding.EncodeToString([]byte(tok + "xy")) // ends with '='
	if !strings.HasSuffix(padded, "=") {
		t.Fatalf("%q: want a padded encoding", padded)
	}
	tests := []struct {
		name      string
		authz     string
		protocols []string
		query     string
		param     string
		want      string
		wantSub   bool
		err       error
	}{
		{"bearer", "Bearer " + tok, nil, "", "", tok, false, nil},
		{"bearer any case", "bEaReR   " + tok + " ", nil, "", "", tok, false, nil},
		{"subprotocol", "", []string{"jwt-auth, jwt." + b64(tok)}, "", "", tok, true, nil},
		{"subprotocol padded", "", []string{"jwt-auth", "jwt." + padded}, "", "", tok + "xy", true, nil},
		{"subprotocol in a later header", "", []string{"chat, superchat", "jwt-auth,jwt." + b64(tok)}, "", "", tok, true, nil},
		{"first jwt. subprotocol wins", "", []string{"jwt." + b64(tok) + ", jwt." + b64(other)}, "", "", tok, true, nil},
		{"query", "", nil, "access_token=" + tok, "access_token", tok, false, nil},
		{"bearer before subprotocol and query", "Bearer " + tok, []string{"jwt." + b64(other)}, "access_token=" + other, "access_token", tok, false, nil},
		{"subprotocol before query", "", []string{"jwt." + b64(tok)}, "access_token=" + other, "access_token", tok, true, nil},
		{"basic auth is not a source", "Basic dXNlcjpwYXNz", []string{"jwt." + b64(tok)}, "", "", tok, true, nil},
		{"query disabled", "", nil, "access_token=" + tok, "", "", false, auth.ErrNoToken},
		{"other query parameter", "", nil, "token=" + tok, "access_token", "", false, auth.ErrNoToken},
		{"nothing", "", []string{"jwt-auth"}, "", "", "", false, auth.ErrNoToken},
		{"empty bearer", "Bearer ", []string{"jwt." + b64(tok)}, "", "", "", false, auth.ErrInvalidToken},
		{"bearer with a space inside", "Bearer " + tok + " x", nil, "", "", "", false, auth.ErrInvalidToken},
		{"malformed base64", "", []string{"jwt-auth, jwt.***"}, "", "", "", false, auth.ErrInvalidToken},
		{"standard base64 alphabet", "", []string{"jwt." + base64.StdEncoding.EncodeToString([]byte("\xfb\xff"+tok))}, "", "", "", false, auth.ErrInvalidToken},
		{"empty subprotocol token", "", []string{"jwt."}, "", "", "", false, auth.ErrInvalidToken},
		{"subprotocol holds a non-JWT byte", "", []string{"jwt." + b64(tok+"\n")}, "", "", "", false, auth.ErrInvalidToken},
		{"query holds a non-JWT byte", "", nil, "access_token=" + url.QueryEscape(tok+" "), "access_token", "", false, auth.ErrInvalidToken},
		{"too long", "Bearer " + strings.Repeat("a", auth.MaxTokenBytes+1), nil, "", "", "", false, auth.ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, viaSub, err := auth.TokenFromRequest(request(tt.authz, tt.protocols, tt.query), tt.param)
			if tt.err != nil {
				if !errors.Is(err, tt.err) || got != "" {
					t.Fatalf("TokenFromRequest = %q, %v; want the error %v", got, err, tt.err)
				}
				noTokenIn(t, err.Error(), tok)
				return
			}
			if err != nil || got != tt.want || viaSub != tt.wantSub {
				t.Fatalf("TokenFromRequest = %q, %v, %v; want %q, %v", got, viaSub, err, tt.want, tt.wantSub)
			}
		})
	}
}

// FuzzTokenFromRequest: whatever the headers and query hold, no panic, a
// token only of bytes a JWT can hold, and the sources in order.
func FuzzTokenFromRequest(f *testing.F) {
	f.Add("Bearer "+tok, "jwt-auth, jwt."+b64(tok), "x")
	f.Add("", "jwt-auth, jwt."+b64(tok)+"==", "")
	f.Add("bearer", "jwt.", tok)
	f.Add("Basic x", "jwt.%%%, jwt."+b64(tok), tok)
	f.Add("", "a,,b, ,jwt-auth", "a b")
	f.Fuzz(func(t *testing.T, authz, protocols, query string) {
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.URL.RawQuery = url.Values{"access_token": {query}}.Encode()
		r.Header.Set("Authorization", authz)
		values := strings.Split(protocols, "\n")
		for _, v := range values {
			r.Header.Add("Sec-WebSocket-Protocol", v)
		}
		got, viaSub, err := auth.TokenFromRequest(r, "access_token")
		if err != nil {
			if got != "" || viaSub {
				t.Fatalf("error %v with token %q, viaSubprotocol %v", err, got, viaSub)
			}
			if len(got) >= 8 && strings.Contains(err.Error(), got) {
				t.Fatalf("error %q contains the token", err)
			}
			return
		}
		if got == "" || len(got) > auth.MaxTokenBytes {
			t.Fatalf("token of %d bytes", len(got))
		}
		for i := 0; i < len(got); i++ {
			c := got[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
				t.Fatalf("token %q holds %q", got, c)
			}
		}
		scheme, rest, _ := strings.Cut(strings.TrimSpace(authz), " ")
		hasBearer := strings.EqualFold(scheme, "bearer")
		// The first "jwt." entry of the comma-separated lists, if any.
		var entry string
		hasSub := false
	entries:
		for _, v := range values {
			for _, e := range strings.Split(v, ",") {
				if entry, hasSub = strings.CutPrefix(strings.TrimSpace(e), "jwt."); hasSub {
					break entries
				}
			}
		}
		switch {
		case hasBearer:
			if viaSub || got != strings.TrimSpace(rest) {
				t.Fatalf("Authorization %q: got %q (subprotocol %v); want the bearer token", authz, got, viaSub)
			}
		case viaSub:
			raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(entry, "="))
			if !hasSub || err != nil || string(raw) != got {
				t.Fatalf("token %q via a subprotocol, but the first jwt. entry of %q is %q", got, protocols, entry)
			}
		default:
			if hasSub || got != query {
				t.Fatalf("token %q from the query, though the subprotocols are %q and the query %q", got, protocols, query)
			}
		}
	})
}
