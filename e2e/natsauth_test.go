package e2e

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// The embedded NATS server on a non-loopback address needs authentication:
// without it serve refuses to start, saying why.
func TestEmbeddedNATSBeyondLoopbackNeedsAuth(t *testing.T) {
	t.Parallel()
	r := cli(t, "", "serve", "--listen", "127.0.0.1:0", "--nats-listen", "0.0.0.0:0", "--data-dir", t.TempDir())
	if r.Code == 0 || !strings.Contains(r.Stderr, "requires authentication") {
		t.Fatalf("serve with --nats-listen 0.0.0.0 and no auth: exit %d, want a refusal naming authentication\n%s", r.Code, r)
	}
}

// With --nats-token the embedded server requires it, the sidecar presents
// it, and no log line or error shows it, nor a password in --nats-url.
func TestNATSCredentialsNeverLogged(t *testing.T) {
	t.Parallel()
	const token = "s3cret-t0ken"
	sc := startSidecar(t, sidecarConfig{Args: []string{"--nats-token", token}})
	if nc, err := nats.Connect(sc.NATSURL); err == nil {
		nc.Close()
		t.Fatal("an agent connected to the embedded server without the token")
	}
	nc, err := nats.Connect(sc.NATSURL, nats.Token(token))
	if err != nil {
		t.Fatalf("agent with the token: %v", err)
	}
	nc.Close()
	c := dial(t, sc, "client", dialOptions{Query: "thread_id=t_auth"})
	c.expectBound("t_auth")
	if lines := sc.logs.grep(token); len(lines) > 0 {
		t.Errorf("the token is in the log:\n%s", strings.Join(lines, "\n"))
	}

	// A second sidecar given the URL with a wrong token fails, and its
	// error hides the token; one with a password hides the password.
	for _, u := range []string{
		strings.Replace(sc.NATSURL, "nats://", "nats://wr0ng-t0ken@", 1),
		strings.Replace(sc.NATSURL, "nats://", "nats://user:pa55word@", 1),
	} {
		r := cli(t, "", "serve", "--listen", "127.0.0.1:0", "--nats-url", u, "--data-dir", t.TempDir())
		if r.Code == 0 {
			t.Fatalf("serve with bad credentials started\n%s", r)
		}
		for _, secret := range []string{"wr0ng-t0ken", "pa55word"} {
			if strings.Contains(r.Stderr+r.Stdout, secret) {
				t.Errorf("serve shows the credential %q:\n%s", secret, r)
			}
		}
	}
	sc.stop(t)
	for _, secret := range []string{token, "wr0ng-t0ken", "pa55word"} {
		if lines := sc.logs.grep(secret); len(lines) > 0 {
			t.Errorf("%q is in the embedded server's log:\n%s", secret, strings.Join(lines, "\n"))
		}
	}
}
