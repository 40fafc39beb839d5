package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/bus"
	"github.com/threadbus/threadbus/subjects"
)

const (
	// defaultNATSURL is where `threadbus serve` runs its embedded server.
	defaultNATSURL = "nats://127.0.0.1:4222"
	// connectTimeout bounds dialing NATS: an operator command fails fast.
	connectTimeout = 3 * time.Second
	// requestTimeout bounds one-shot JetStream requests of a command.
	requestTimeout = 10 * time.Second
)

// natsURLFlag is --nats-url, which every operator command takes.
func natsURLFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "nats-url",
		Value:   defaultNATSURL,
		Usage:   "`URL` of the NATS server or cluster the sidecars use (comma-separated for several)",
		EnvVars: []string{"NATS_URL", "THREADBUS_NATS_URL"},
	}
}

// errConnClosed ends a command whose NATS connection closed for good (the
// client gave up reconnecting).
var errConnClosed = errors.New("lost the connection to NATS")

// natsConn is a command's connection to NATS.
type natsConn struct {
	nc *nats.Conn
	js jetstream.JetStream
	// ctx is the command's context, also cancelled, with the cause
	// errConnClosed, when the connection closes for good: a long-running
	// command then ends with an error instead of waiting forever.
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// connectNATS connects to --nats-url. The caller calls close.
func connectNATS(c *cli.Context) (*natsConn, error) {
	u := c.String("nats-url")
	if u == "" {
		u = defaultNATSURL
	}
	ctx, cancel := context.WithCancelCause(c.Context)
	stderr := c.App.ErrWriter
	nc, err := nats.Connect(u,
		nats.Name("threadbus-cli"),
		nats.Timeout(connectTimeout),
		nats.ClosedHandler(func(*nats.Conn) { cancel(fmt.Errorf("%w at %s", errConnClosed, redactURL(u))) }),
		// A long-running command says when it waits for NATS to come back,
		// once, rather than the client's repeated async errors.
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				fmt.Fprintf(stderr, "threadbus: disconnected from NATS (%v), reconnecting\n", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			fmt.Fprintf(stderr, "threadbus: reconnected to NATS at %s\n", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}),
	)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", redactURL(u), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		cancel(nil)
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &natsConn{nc: nc, js: js, ctx: ctx, cancel: cancel}, nil
}

func (n *natsConn) close() {
	n.cancel(nil) // first: closing is not losing the connection
	n.nc.Close()
}

// ended returns err, or why the command's context ended when err is that
// context's error: nil when the user interrupted the command (what was
// asked for until then has been printed), the lost connection otherwise.
func (n *natsConn) ended(err error) error {
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if cause := context.Cause(n.ctx); errors.Is(cause, errConnClosed) {
		return cause
	}
	if err != nil && n.ctx.Err() != nil {
		return nil // interrupted
	}
	return err
}

// explain turns the errors of a NATS without JetStream, or without a
// sidecar's bucket, into what an operator should check.
func explain(err error) error {
	switch {
	case errors.Is(err, bus.ErrNoRegistry):
		return fmt.Errorf("no bindings registry (KV bucket %s) on this NATS: is a sidecar running here?", bus.BindingsBucket)
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w: is JetStream enabled on this NATS?", err)
	}
	return err
}

// redactURL hides passwords and tokens of a NATS URL in messages.
func redactURL(s string) string { return bus.RedactURL(s) }

// threadsStream returns the THREADS stream, or an error saying why there is none.
func threadsStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, subjects.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("no stream %s on this NATS: is a sidecar running here?", subjects.Stream)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return nil, fmt.Errorf("stream %s: JetStream is not enabled on this NATS", subjects.Stream)
	case err != nil:
		return nil, explain(fmt.Errorf("stream %s: %w", subjects.Stream, err))
	}
	return s, nil
}

// timeFormat is how commands print times: UTC, to the millisecond.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(timeFormat)
}

// withTimeout bounds a command's one-shot requests by requestTimeout.
func (n *natsConn) withTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(n.ctx, requestTimeout)
}
