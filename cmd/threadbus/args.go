package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// errHelpShown stops a command whose --help came after its arguments: the
// help has been printed and there is nothing else to do.
var errHelpShown = errors.New("help shown")

// leaf finishes an operator command: usage errors become one line instead of
// urfave/cli's message plus the whole help, and the action receives its
// positional arguments, between min and max of them, with any flags that
// follow them applied ("threadbus tail demo --follow": urfave/cli v2 stops
// parsing flags at the first argument).
func leaf(cmd *cli.Command, min, max int, action func(c *cli.Context, args []string) error) *cli.Command {
	cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error {
		return usageError(c, err.Error())
	}
	cmd.Action = func(c *cli.Context) error {
		args, err := positional(c)
		if errors.Is(err, errHelpShown) {
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case len(args) < min:
			return usageError(c, "missing "+strings.Join(argNames(c.Command)[len(args):min], " "))
		case len(args) > max:
			return usageError(c, fmt.Sprintf("unexpected argument %q", args[max]))
		}
		return action(c, args)
	}
	return cmd
}

// group finishes a command made of subcommands: no "help" subcommand, and an
// unknown subcommand is an error rather than a help page.
func group(cmd *cli.Command) *cli.Command {
	cmd.HideHelpCommand = true
	cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error {
		return usageError(c, err.Error())
	}
	cmd.Action = func(c *cli.Context) error {
		if c.Args().Present() {
			return usageError(c, fmt.Sprintf("unknown command %q", c.Args().First()))
		}
		return cli.ShowSubcommandHelp(c)
	}
	return cmd
}

// usageError is a one-line error naming the command and how to call it.
func usageError(c *cli.Context, msg string) error {
	// main prefixes every error with "threadbus: ".
	name := strings.TrimPrefix(c.Command.HelpName, c.App.Name+" ")
	if c.Command.UsageText != "" {
		return fmt.Errorf("%s: %s (usage: %s)", name, msg, firstLine(c.Command.UsageText))
	}
	return fmt.Errorf("%s: %s (see %s --help)", name, msg, c.Command.HelpName)
}

// argNames returns the upper-case words of a command's usage line that name
// its required arguments, such as THREAD or CONN: those before the first
// bracketed (optional) part.
func argNames(cmd *cli.Command) []string {
	var names []string
	for _, w := range strings.Fields(firstLine(cmd.UsageText)) {
		if strings.HasPrefix(w, "[") {
			break
		}
		if w == strings.ToUpper(w) && w[0] >= 'A' && w[0] <= 'Z' {
			names = append(names, w)
		}
	}
	return names
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}

// positional returns the command's arguments that are not flags, applying
// flags found among them to c. "-" is an argument (stdin); everything after
// "--" is an argument.
func positional(c *cli.Context) ([]string, error) {
	in := c.Args().Slice()
	var out []string
	for i := 0; i < len(in); i++ {
		a := in[i]
		if a == "--" {
			return append(out, in[i+1:]...), nil
		}
		if a == "-" || !strings.HasPrefix(a, "-") {
			out = append(out, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := lookupFlag(c.Command, name)
		if f == nil {
			return nil, usageError(c, "flag provided but not defined: "+a)
		}
		if name == "help" || name == "h" {
			_ = cli.ShowCommandHelp(c.Lineage()[1], c.Command.Name)
			return nil, errHelpShown
		}
		if !hasValue {
			if _, isBool := f.(*cli.BoolFlag); isBool {
				value = "true"
			} else {
				if i+1 == len(in) {
					return nil, usageError(c, "flag needs an argument: "+a)
				}
				i++
				value = in[i]
			}
		}
		if err := c.Set(name, value); err != nil {
			return nil, usageError(c, fmt.Sprintf("invalid value %q for flag %s: %v", value, a, err))
		}
	}
	return out, nil
}

func lookupFlag(cmd *cli.Command, name string) cli.Flag {
	if name == "help" || name == "h" {
		return cli.HelpFlag
	}
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}
