package auth

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
)

// SubprotocolJWT is the WebSocket subprotocol the server selects when the
// token came in a "jwt.<base64url(JWT)>" subprotocol: the legacy browser
// client offers both.
const SubprotocolJWT = "jwt-auth"

// subprotocolTokenPrefix starts the subprotocol that carries the token.
const subprotocolTokenPrefix = "jwt."

// MaxTokenBytes bounds a token from any source. JWTs from identity
// providers are rarely over 4 KiB.
const MaxTokenBytes = 16 << 10

// TokenFromRequest finds the token of a WebSocket handshake, in this order:
// an "Authorization: Bearer" header (the scheme in any case); then a
// Sec-WebSocket-Protocol entry "jwt.<base64url(JWT)>", padded or not, in any
// of the header's comma-separated lists (viaSubprotocol is then true, and
// the server should select SubprotocolJWT); then the query parameter named
// queryParam, only when queryParam is not empty. The first source present
// decides: a malformed token there is ErrInvalidToken, not a reason to look
// further. No token anywhere is ErrNoToken. Errors never contain the token.
func TokenFromRequest(r *http.Request, queryParam string) (token string, viaSubprotocol bool, err error) {
	if t, ok := bearer(r.Header.Get("Authorization")); ok {
		t, err = checkToken(t, "Authorization header")
		return t, false, err
	}
	if enc, ok := subprotocolToken(r.Header.Values("Sec-WebSocket-Protocol")); ok {
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(enc, "="))
		if err != nil {
			return "", false, fmt.Errorf("%w: malformed base64 in the %s subprotocol", ErrInvalidToken, subprotocolTokenPrefix+"…")
		}
		t, err := checkToken(string(raw), "subprotocol")
		return t, err == nil, err
	}
	if queryParam != "" && r.URL != nil {
		if q := r.URL.Query(); q.Has(queryParam) {
			t, err := checkToken(q.Get(queryParam), "query parameter "+queryParam)
			return t, false, err
		}
	}
	return "", false, ErrNoToken
}

// bearer returns the credentials of an Authorization header value with the
// Bearer scheme.
func bearer(h string) (string, bool) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(rest), true
}

// subprotocolToken returns the base64 part of the first "jwt." entry among
// Sec-WebSocket-Protocol header values.
func subprotocolToken(values []string) (string, bool) {
	for _, v := range values {
		for p := range strings.SplitSeq(v, ",") {
			if enc, ok := strings.CutPrefix(strings.TrimSpace(p), subprotocolTokenPrefix); ok {
				return enc, true
			}
		}
	}
	return "", false
}

// checkToken refuses a token that is empty, too long, or holds a byte a
// compact JWS cannot (base64url and dots): such a token could never verify,
// and keeping it out keeps odd bytes out of everything downstream.
func checkToken(t, source string) (string, error) {
	switch {
	case t == "":
		return "", fmt.Errorf("%w: empty token in the %s", ErrInvalidToken, source)
	case len(t) > MaxTokenBytes:
		return "", fmt.Errorf("%w: token in the %s is over %d bytes", ErrInvalidToken, source, MaxTokenBytes)
	}
	for i := 0; i < len(t); i++ {
		if !isTokenByte(t[i]) {
			return "", fmt.Errorf("%w: token in the %s has a byte a JWT cannot hold", ErrInvalidToken, source)
		}
	}
	return t, nil
}

func isTokenByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
}
