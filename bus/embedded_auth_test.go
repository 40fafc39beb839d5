package bus_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/threadbus/threadbus/bus"
)

func TestEmbeddedBeyondLoopbackNeedsAuth(t *testing.T) {
	dir := t.TempDir()
	if ns, err := bus.StartServer(bus.ServerConfig{Listen: "0.0.0.0:0", StoreDir: dir}); !errors.Is(err, bus.ErrNoAuth) {
		if ns != nil {
			ns.Shutdown()
		}
		t.Fatalf("StartServer on 0.0.0.0 without auth: %v, want ErrNoAuth", err)
	}
	conf := filepath.Join(dir, "open.conf")
	os.WriteFile(conf, []byte("listen: 0.0.0.0:-1\nauthorization { users: [{user: a, password: b}] }\nno_auth_user: a\n"), 0o600)
	if ns, err := bus.StartServer(bus.ServerConfig{ConfigFile: conf, StoreDir: dir}); !errors.Is(err, bus.ErrNoAuth) {
		if ns != nil {
			ns.Shutdown()
		}
		t.Fatalf("StartServer with no_auth_user: %v, want ErrNoAuth", err)
	}

	ns, err := bus.StartServer(bus.ServerConfig{Listen: "0.0.0.0:0", StoreDir: dir, Token: "s3cret"})
	if err != nil {
		t.Fatalf("StartServer with a token: %v", err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if nc, err := nats.Connect(ns.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("connected without the token")
	}
	nc, err := nats.Connect(ns.ClientURL(), nats.Token("s3cret"))
	if err != nil {
		t.Fatalf("connect with the token: %v", err)
	}
	nc.Close()
}

func TestEmbeddedConfigAuthorization(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "auth.conf")
	os.WriteFile(conf, []byte("listen: 0.0.0.0:-1\nauthorization { user: agent, password: pw }\n"), 0o600)
	ns, err := bus.StartServer(bus.ServerConfig{ConfigFile: conf, StoreDir: dir})
	if err != nil {
		t.Fatalf("StartServer with an authorization block: %v", err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("agent", "pw"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	nc.Close()
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                   "nats://127.0.0.1:4222",
		"nats://u:p4ss@h:4222":                    "nats://u:redacted@h:4222",
		"nats://t0ken@h:4222":                     "nats://redacted@h:4222",
		"nats://a:b@h1:4222,nats://t0ken@h2:4222": "nats://a:redacted@h1:4222,nats://redacted@h2:4222",
		"nats://a:b@h1:4222, nats://h2:4222":      "nats://a:redacted@h1:4222,nats://h2:4222",
		"nats://%zz:secret@h":                     "redacted@h",
	} {
		got := bus.RedactURL(in)
		if got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"p4ss", "t0ken", "secret"} {
			if strings.Contains(got, secret) {
				t.Errorf("RedactURL(%q) = %q: shows %s", in, got, secret)
			}
		}
	}
}
