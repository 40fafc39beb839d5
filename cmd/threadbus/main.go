// Command threadbus runs the threadbus sidecar and inspects it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "threadbus:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	app := &cli.App{
		Name:  "threadbus",
		Usage: "thread-aware WebSocket delivery on NATS JetStream",
		Description: "threadbus binds WebSocket connections to conversation threads and delivers\n" +
			"each thread's events from NATS JetStream, replaying what a connection missed.",
		Commands: []*cli.Command{
			serveCommand(),
			bindingsCommand(),
			threadsCommand(),
			tailCommand(),
			publishCommand(),
			bindCommand(),
			benchCommand(),
			tokenCommand(),
		},
		EnableBashCompletion: true,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return fmt.Errorf("%w (see threadbus --help)", err)
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return fmt.Errorf("unknown command %q (see threadbus --help)", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
	}
	return app.RunContext(ctx, args)
}
