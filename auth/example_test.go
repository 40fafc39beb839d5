package auth_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/threadbus/threadbus/auth"
)

// A handshake as the sidecar sees it: find the token, verify it, then ask
// before the bind, through the cache; a revocation message makes the next
// bind ask again.
func Example() {
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	v, err := auth.NewJWTVerifier(ctx, auth.JWTConfig{Secret: key})
	if err != nil {
		panic(err)
	}
	defer v.Close()

	calls := 0
	hook := auth.AuthorizerFunc(func(_ context.Context, req auth.Request) (auth.Decision, error) {
		calls++
		if req.ThreadID != "thread_ab12" {
			return auth.Decision{Code: auth.CodeThreadForbidden, Message: "not yours"}, nil
		}
		return auth.Decision{Allow: true}, nil
	})
	cache := auth.NewCache(hook, time.Minute)

	// The legacy browser client offers two subprotocols.
	tok, _ := auth.MintHS256(key, "u-42", time.Hour, nil, time.Now())
	r := httptest.NewRequest("GET", "/ws?thread_id=thread_ab12", nil)
	r.Header.Set("Sec-WebSocket-Protocol", "jwt-auth, jwt."+base64.RawURLEncoding.EncodeToString([]byte(tok)))
	tok, viaSub, err := auth.TokenFromRequest(r, "")
	if err != nil {
		panic(err)
	}
	id, err := v.Verify(ctx, tok)
	if err != nil {
		panic(err)
	}
	fmt.Println("user:", id.User, "select subprotocol:", viaSub, auth.SubprotocolJWT)

	for _, thread := range []string{"thread_ab12", "thread_ab12", "thread_cd34"} {
		d, err := cache.Authorize(ctx, auth.Request{User: id.User, ThreadID: thread, Via: auth.ViaURL, Claims: id.Claims})
		fmt.Println(thread, d.Allow, d.Code, err)
	}
	user, thread, _ := auth.ParseRevoke([]byte(`{"user":"u-42"}`))
	cache.Revoke(user, thread)
	_, _ = cache.Authorize(ctx, auth.Request{User: id.User, ThreadID: "thread_ab12", Via: auth.ViaSwitch})
	fmt.Println("hook calls:", calls, "cache:", fmt.Sprintf("%+v", cache.Stats()))
	// Output:
	// user: u-42 select subprotocol: true jwt-auth
	// thread_ab12 true  <nil>
	// thread_ab12 true  <nil>
	// thread_cd34 false thread_forbidden <nil>
	// hook calls: 3 cache: {Hits:1 Misses:3 HookCalls:3 Entries:1}
}
