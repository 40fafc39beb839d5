package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/subjects"
)

// bindTimeout bounds a bind request: the sidecar bounds its side by 10s
// (sidecar.DefaultBindTimeout), replay included.
const bindTimeout = 15 * time.Second

func bindCommand() *cli.Command {
	return leaf(&cli.Command{
		Name:      "bind",
		Usage:     "ask the sidecar that holds a connection to bind it to a thread",
		UsageText: "threadbus bind CONN THREAD [--since SEQ] [--epoch EPOCH] [--json]",
		Description: "Sends the backend's bind request, {\"thread_id\":THREAD}, to conn.CONN.bind.\n" +
			"The sidecar that holds the connection binds it, sends the client thread_bound\n" +
			"and the replay, and answers. --since SEQ replays the thread's events after SEQ\n" +
			"(0: all kept); without it, the replay grace applies. --json prints the reply\n" +
			"as the sidecar sent it.\n\n" +
			"Example:\n" +
			"  $ threadbus bind kD3vJb0tWmfd4PLvXy1aBc demo --since 0\n" +
			"  bound connection kD3vJb0tWmfd4PLvXy1aBc to thread demo: replayed 3, recovered true, epoch sxn2k0e8rwg0",
		Flags: []cli.Flag{
			&cli.Uint64Flag{Name: "since", Usage: "replay the thread's events after `SEQ`"},
			&cli.StringFlag{Name: "epoch", Usage: "the stream `EPOCH` that SEQ belongs to (from thread_bound)"},
			&cli.BoolFlag{Name: "json", Usage: "print the sidecar's reply as is"},
			natsURLFlag(),
		},
	}, 2, 2, bind)
}

// bindRequest and bindReply are the bodies of conn.<cid>.bind (README).
type bindRequest struct {
	ThreadID string  `json:"thread_id"`
	Since    *uint64 `json:"since,omitempty"`
	Epoch    string  `json:"epoch,omitempty"`
}

type bindReply struct {
	OK           bool   `json:"ok"`
	ConnectionID string `json:"connection_id"`
	ThreadID     string `json:"thread_id"`
	Replayed     int    `json:"replayed"`
	Recovered    bool   `json:"recovered"`
	Epoch        string `json:"epoch"`
	Error        *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func bind(c *cli.Context, args []string) error {
	cid, tid := args[0], args[1]
	subj, err := subjects.ConnBind(cid)
	if err != nil {
		return err
	}
	if err := subjects.ValidateThreadID(tid); err != nil {
		return err
	}
	req := bindRequest{ThreadID: tid, Epoch: c.String("epoch")}
	if c.IsSet("since") {
		s := c.Uint64("since")
		req.Since = &s
	}
	data, _ := json.Marshal(req) // plain struct: always marshals

	conn, err := connectNATS(c)
	if err != nil {
		return err
	}
	defer conn.close()
	ctx, cancel := context.WithTimeout(conn.ctx, bindTimeout)
	defer cancel()
	msg, err := conn.nc.RequestWithContext(ctx, subj, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("no sidecar has connection %s open", cid)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("bind connection %s to thread %s: no reply within %v", cid, tid, bindTimeout)
	case err != nil:
		return fmt.Errorf("bind connection %s to thread %s: %w", cid, tid, err)
	}
	var r bindReply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return fmt.Errorf("bind connection %s to thread %s: reply is not JSON: %s", cid, tid, clip(msg.Data))
	}
	if r.Error != nil {
		return fmt.Errorf("bind connection %s to thread %s: %s (%s)", cid, tid, r.Error.Message, r.Error.Code)
	}
	if !r.OK {
		return fmt.Errorf("bind connection %s to thread %s: unexpected reply %s", cid, tid, clip(msg.Data))
	}
	if c.Bool("json") {
		_, err = fmt.Fprintf(c.App.Writer, "%s\n", msg.Data)
		return err
	}
	_, err = fmt.Fprintf(c.App.Writer, "bound connection %s to thread %s: replayed %d, recovered %t, epoch %s\n",
		r.ConnectionID, r.ThreadID, r.Replayed, r.Recovered, r.Epoch)
	return err
}
