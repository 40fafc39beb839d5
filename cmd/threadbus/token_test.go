package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/threadbus/threadbus/auth"
)

func TestClaimValue(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		{"admin", "admin"},
		{"42", float64(42)},
		{"true", true},
		{`["a","b"]`, []any{"a", "b"}},
		{`{"k":1}`, map[string]any{"k": float64(1)}},
		{`"quoted"`, "quoted"},
		{"", ""},
		{"a=b", "a=b"},
		{"[1,", "[1,"},
	}
	for _, tt := range tests {
		if got := claimValue(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("claimValue(%q) = %#v; want %#v", tt.in, got, tt.want)
		}
	}
}

// TestTokenCommand runs threadbus token and verifies what it prints.
func TestTokenCommand(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "jwt.secret")
	secret := "0123456789abcdef0123456789abcdef"
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := captureStdout(t, func() error {
		return run(context.Background(), []string{"threadbus", "token", "--secret-file", secretFile, "--user", "u-42",
			"--ttl", "10m", "--claim", "role=admin", "--claim", `groups=["a","b"]`, "--claim", "sub=root"})
	})
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("output %q: want one line", out)
	}
	v, err := auth.NewJWTVerifier(context.Background(), auth.JWTConfig{Secret: []byte(secret)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	id, err := v.Verify(context.Background(), strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if id.User != "u-42" || id.Claims["role"] != "admin" || !reflect.DeepEqual(id.Claims["groups"], []any{"a", "b"}) {
		t.Fatalf("Verify = %+v", id)
	}
	if left := time.Until(id.Expires); left <= 8*time.Minute || left > 10*time.Minute {
		t.Fatalf("token expires in %v; want about 10m", left)
	}

	for _, args := range [][]string{
		{"--user", "u"},
		{"--secret-file", secretFile},
		{"--secret-file", secretFile, "--user", "u", "--claim", "novalue"},
		{"--secret-file", filepath.Join(t.TempDir(), "missing"), "--user", "u"},
	} {
		if err := run(context.Background(), append([]string{"threadbus", "token"}, args...)); err == nil {
			t.Errorf("threadbus token %v succeeded; want an error", args)
		}
	}
}

// captureStdout returns what f writes to os.Stdout.
func captureStdout(t *testing.T, f func() error) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	ferr := f()
	os.Stdout = stdout
	w.Close()
	out, err := io.ReadAll(r)
	r.Close()
	if ferr != nil {
		t.Fatalf("run: %v", ferr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
