package bus

import (
	"net/url"
	"strings"
)

// RedactURL hides the credentials of a NATS URL, or of a comma-separated
// list of them, for logs and errors: a password, and a user name without
// one, which NATS reads as a token.
func RedactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = redactOne(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

func redactOne(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if at := strings.LastIndex(s, "@"); at >= 0 {
			return "redacted" + s[at:] // unparsable, but credentials may precede the @
		}
		return s
	}
	if u.User == nil {
		return s
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "redacted")
	} else {
		u.User = url.User("redacted")
	}
	return u.String()
}
