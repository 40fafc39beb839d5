package e2e

import (
	"strings"
	"testing"
)

// cliCommands are the operator commands, each with valid arguments.
var cliCommands = [][]string{
	{"bindings", "ls"},
	{"bindings", "watch"},
	{"threads", "show", "cli_t"},
	{"tail", "cli_t"},
	{"tail", "cli_t", "--follow"},
	{"publish", "cli_t", "--type", "agent_started"},
	{"bind", "cli_c", "cli_t"},
}

// Without a NATS server every command fails at once with one line naming
// the URL, from the flag or from NATS_URL.
func TestCLINoNATS(t *testing.T) {
	t.Parallel()
	url := cliUnusedNATSURL(t)
	for _, args := range cliCommands {
		cliFails(t, url, args, "cannot connect to NATS at "+url+": ")
		cliFails(t, "", append(args, "--nats-url", url), "cannot connect to NATS at "+url+": ")
	}
	// A password in the URL is not printed.
	r := cliFails(t, "", []string{"bindings", "ls", "--nats-url", "nats://operator:s3cret@" + strings.TrimPrefix(url, "nats://")}, "cannot connect to NATS at nats://operator:")
	if strings.Contains(r.Stderr, "s3cret") {
		t.Errorf("the error shows the password: %q", r.Stderr)
	}
}

// Invalid ids are refused before anything reaches NATS: one line, exit 1,
// nothing published.
func TestCLIInvalidIDs(t *testing.T) {
	t.Parallel()
	sc := startSidecar(t, sidecarConfig{})
	url := sc.NATSURL
	ag := newAgent(t, url)
	bad := []string{"a.b", "x*", ">", "has space", "", strings.Repeat("t", 129), "thread.x.out"}
	for _, id := range bad {
		cliFails(t, url, []string{"threads", "show", id}, "invalid thread id")
		cliFails(t, url, []string{"tail", id}, "invalid thread id")
		cliFails(t, url, []string{"publish", id, `{"type":"agent_started"}`}, "invalid thread id")
		cliFails(t, url, []string{"publish", id, "--type", "agent_started"}, "invalid thread id")
		cliFails(t, url, []string{"bind", "cli_c", id}, "invalid thread id")
		cliFails(t, url, []string{"bind", id, "cli_t"}, "invalid connection id")
		cliFails(t, url, []string{"bindings", "ls", "--thread", id}, "invalid thread id")
		cliFails(t, url, []string{"bindings", "watch", "--thread", id}, "invalid thread id")
	}
	ag.expectCount(t, "thread.>", 0, "no command with an invalid id may publish")
}

// Usage mistakes are one line naming the command and its usage, not a help page.
func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	url := cliUnusedNATSURL(t) // none of these may get as far as connecting
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"threads", "show"}, "threads show: missing THREAD (usage: threadbus threads show THREAD"},
		{[]string{"tail"}, "tail: missing THREAD"},
		{[]string{"bind", "cli_c"}, "bind: missing THREAD"},
		{[]string{"bind"}, "bind: missing CONN THREAD"},
		{[]string{"publish"}, "publish: missing THREAD"},
		{[]string{"tail", "a", "b"}, `tail: unexpected argument "b"`},
		{[]string{"tail", "cli_t", "--no-such-flag"}, "tail: flag provided but not defined: --no-such-flag"},
		{[]string{"tail", "--no-such-flag", "cli_t"}, "tail: flag provided but not defined"},
		{[]string{"tail", "cli_t", "--since"}, "tail: flag needs an argument: --since"},
		{[]string{"tail", "cli_t", "--since", "yesterday"}, `--since "yesterday": want a sequence`},
		{[]string{"bind", "cli_c", "cli_t", "--since", "-1"}, `bind: invalid value "-1" for flag --since`},
		{[]string{"bindings", "ls", "extra"}, `bindings ls: unexpected argument "extra"`},
		{[]string{"bindings", "nope"}, `bindings: unknown command "nope"`},
		{[]string{"threads", "nope"}, `threads: unknown command "nope"`},
		{[]string{"publish", "cli_t", "--type", "", "{}"}, "--type: empty"},
	} {
		cliFails(t, url, tc.args, tc.want)
	}
}

// --help on every command explains it with an example, on stdout, exit 0;
// also after the arguments.
func TestCLIHelp(t *testing.T) {
	t.Parallel()
	for _, args := range append(cliCommands, []string{"threads", "show", "cli_t", "--help"}, []string{"bind", "--help"}) {
		name := args[0]
		if name == "bindings" || name == "threads" {
			name += " " + args[1]
		}
		r := cliOK(t, "", append(args, "--help")...)
		if !strings.Contains(r.Stdout, "threadbus "+name) || !strings.Contains(r.Stdout, "Example") || !strings.Contains(r.Stdout, "--nats-url") {
			t.Errorf("threadbus %s --help: want the usage, an example and --nats-url:\n%s", strings.Join(args, " "), r.Stdout)
		}
	}
	for _, g := range []string{"bindings", "threads"} {
		r := cliOK(t, "", g, "--help")
		if !strings.Contains(r.Stdout, "COMMANDS") || strings.Contains(r.Stdout, "help, h") {
			t.Errorf("threadbus %s --help: want its commands and no help command:\n%s", g, r.Stdout)
		}
	}
}
