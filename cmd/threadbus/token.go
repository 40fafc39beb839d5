package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/threadbus/threadbus/auth"
)

func tokenCommand() *cli.Command {
	return leaf(&cli.Command{
		Name:      "token",
		Usage:     "print a signed HS256 token, for trying --auth jwt out and for tests",
		UsageText: "threadbus token --secret-file FILE --user USER [--ttl 1h] [--claim KEY=VALUE ...]",
		Description: "Signs a JWT with the HMAC secret that serve --jwt-secret-file reads (a trailing\n" +
			"newline in the file is not part of it) and prints it on one line. sub is USER,\n" +
			"iat is now, exp is now plus --ttl. Each --claim adds a claim: a VALUE that is\n" +
			"valid JSON (a number, true, an array, an object, a quoted string) is taken as\n" +
			"JSON, anything else as a string. Claims cannot replace sub, iat or exp.\n\n" +
			"Examples:\n" +
			"  $ head -c 32 /dev/urandom | base64 > jwt.secret\n" +
			"  $ threadbus token --secret-file jwt.secret --user u-42 --claim role=admin --claim 'groups=[\"a\",\"b\"]'\n" +
			"  eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3NjQ...\n" +
			"  $ websocat -H \"Authorization: Bearer $(threadbus token --secret-file jwt.secret --user u-42)\" ws://127.0.0.1:8080/ws",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "secret-file", Usage: "`FILE` holding the HMAC secret (the serve --jwt-secret-file)", EnvVars: envVars("JWT_SECRET_FILE")},
			&cli.StringFlag{Name: "user", Usage: "`USER`, the token's subject: the user id threadbus sees"},
			&cli.DurationFlag{Name: "ttl", Value: time.Hour, Usage: "how long (a `DURATION`) the token is valid"},
			&cli.GenericFlag{Name: "claim", Value: &claimsFlag{}, Usage: "add the claim `KEY=VALUE` (repeatable; VALUE as JSON when it is JSON)"},
		},
	}, 0, 0, token)
}

func token(c *cli.Context, _ []string) error {
	switch {
	case c.String("secret-file") == "":
		return usageError(c, "missing --secret-file")
	case c.String("user") == "":
		return usageError(c, "missing --user")
	}
	secret, err := auth.ReadSecretFile(c.String("secret-file"))
	if err != nil {
		return err
	}
	claims := c.Generic("claim").(*claimsFlag)
	tok, err := auth.MintHS256(secret, c.String("user"), c.Duration("ttl"), claims.m, time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.App.Writer, tok)
	return err
}

// claimsFlag collects --claim KEY=VALUE. A StringSliceFlag would split
// values at commas, which JSON arrays hold.
type claimsFlag struct{ m map[string]any }

func (f *claimsFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("--claim %q: want KEY=VALUE", s)
	}
	if f.m == nil {
		f.m = map[string]any{}
	}
	f.m[k] = claimValue(v)
	return nil
}

func (f *claimsFlag) String() string {
	if f == nil || len(f.m) == 0 {
		return ""
	}
	b, _ := json.Marshal(f.m)
	return string(b)
}

// claimValue is v as JSON when it is JSON, else v as a string.
func claimValue(v string) any {
	var x any
	if err := json.Unmarshal([]byte(v), &x); err == nil {
		return x
	}
	return v
}
