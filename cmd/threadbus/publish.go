package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/subjects"
)

// maxBody bounds a body read from stdin; NATS refuses larger messages anyway
// (1 MiB by default).
const maxBody = 8 << 20

func publishCommand() *cli.Command {
	return leaf(&cli.Command{
		Name:      "publish",
		Usage:     "publish an event to a thread, as an agent would",
		UsageText: "threadbus publish THREAD [--type TYPE] [JSON|-]",
		Description: "Stores a JSON object on thread.THREAD.out with JetStream, as an agent does,\n" +
			"and prints the sequence the stream acknowledged: the \"seq\" clients receive it\n" +
			"with. The body is the argument, or stdin with -. --type sets (or replaces) its\n" +
			"\"type\" key, and then the body may be left out. Keys are kept in order.\n\n" +
			"Examples:\n" +
			"  $ threadbus publish demo --type agent_thinking '{\"payload\":{\"reasoning\":\"looking\",\"step_number\":1}}'\n" +
			"  published thread.demo.out seq 42\n" +
			"  $ echo '{\"type\":\"agent_completed\",\"payload\":{}}' | threadbus publish demo -\n" +
			"  published thread.demo.out seq 43",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "type", Usage: "set the event's \"type\" key to `TYPE`"},
			natsURLFlag(),
		},
	}, 1, 2, publish)
}

func publish(c *cli.Context, args []string) error {
	tid := args[0]
	subj, err := subjects.ThreadOut(tid)
	if err != nil {
		return err
	}
	var body []byte
	switch {
	case len(args) == 2 && args[1] == "-":
		body, err = io.ReadAll(io.LimitReader(os.Stdin, maxBody+1))
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
		if len(body) > maxBody {
			return fmt.Errorf("event from stdin is over %d bytes", maxBody)
		}
	case len(args) == 2:
		body = []byte(args[1])
	case c.IsSet("type"):
		body = []byte("{}")
	default:
		return usageError(c, "missing the event: give a JSON object, - to read it from stdin, or --type")
	}
	body = bytes.TrimSpace(body)
	if c.IsSet("type") {
		if c.String("type") == "" {
			return errors.New("--type: empty")
		}
		body, err = withType(body, c.String("type"))
	} else {
		err = checkObject(body)
	}
	if err != nil {
		return err
	}

	conn, err := connectNATS(c)
	if err != nil {
		return err
	}
	defer conn.close()
	ctx, cancel := conn.withTimeout()
	defer cancel()
	ack, err := conn.js.Publish(ctx, subj, body, jetstream.WithExpectStream(subjects.Stream))
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		return fmt.Errorf("publish to %s: no stream stores it: is a sidecar running on this NATS?", subj)
	}
	if err != nil {
		return fmt.Errorf("publish to %s: %w", subj, err)
	}
	_, err = fmt.Fprintf(c.App.Writer, "published %s seq %d\n", subj, ack.Sequence)
	return err
}

// checkObject fails unless body is one JSON object.
func checkObject(body []byte) error {
	_, err := objectMembers(body)
	return err
}

// withType returns the object body with "type" set to typ, first, and its
// other keys after it in their order.
func withType(body []byte, typ string) ([]byte, error) {
	members, err := objectMembers(body)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	out.WriteString(`{"type":`)
	t, _ := json.Marshal(typ) // a string: always marshals
	out.Write(t)
	for _, m := range members {
		if m.key == "type" {
			continue
		}
		k, _ := json.Marshal(m.key)
		out.WriteByte(',')
		out.Write(k)
		out.WriteByte(':')
		out.Write(m.value)
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

type member struct {
	key   string
	value json.RawMessage
}

// objectMembers parses body as one JSON object and returns its members in order.
func objectMembers(body []byte) ([]member, error) {
	notObject := func(why string) error {
		return fmt.Errorf("the event must be a JSON object, like {\"type\":\"agent_thinking\",\"payload\":{}}; got %s (%s)", clip(body), why)
	}
	if len(body) == 0 {
		return nil, notObject("empty")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, notObject(err.Error())
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, notObject("not an object")
	}
	var ms []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, notObject(err.Error())
		}
		key, _ := tok.(string) // the decoder only yields string keys here
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, notObject(err.Error())
		}
		ms = append(ms, member{key: key, value: v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, notObject(err.Error())
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, notObject("data after the object")
	}
	return ms, nil
}

func clip(b []byte) string {
	const max = 40
	if len(b) > max {
		return fmt.Sprintf("%q...", b[:max])
	}
	return fmt.Sprintf("%q", b)
}
