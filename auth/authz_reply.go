package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Bounds on what a hook reply may carry. The code and message reach the
// client in an error frame.
const (
	maxReplyTTL     = 24 * time.Hour
	maxCodeBytes    = 64
	maxMessageBytes = 512
)

// reply is the hook's answer as the contract writes it.
type reply struct {
	Allow   *bool    `json:"allow"`
	TTL     *float64 `json:"ttl_s"`
	Code    string   `json:"code"`
	Message string   `json:"message"`
}

// parseReply reads a hook reply. A body that is not a JSON object with a
// boolean "allow" is unreadable: the caller fails closed. ttl_s absent gives
// a zero TTL (the cache's default); ttl_s of 0 or less a negative one (do
// not cache); it is capped at a day. A denial's code defaults to
// thread_forbidden, and one that is not a short snake_case word is replaced
// by it: it reaches clients as is.
func parseReply(data []byte) (Decision, error) {
	var r reply
	if err := json.Unmarshal(data, &r); err != nil {
		return Decision{}, fmt.Errorf("unreadable reply: %w", err)
	}
	if r.Allow == nil {
		return Decision{}, errors.New(`unreadable reply: no boolean "allow"`)
	}
	if *r.Allow {
		d := Decision{Allow: true}
		if r.TTL != nil {
			switch s := *r.TTL; {
			case s <= 0:
				d.TTL = -1
			case s >= maxReplyTTL.Seconds():
				d.TTL = maxReplyTTL
			default:
				d.TTL = time.Duration(s * float64(time.Second))
			}
		}
		return d, nil
	}
	d := Decision{Code: r.Code, Message: r.Message}
	if !isCode(d.Code) {
		d.Code = CodeThreadForbidden
	}
	if len(d.Message) > maxMessageBytes {
		d.Message = d.Message[:maxMessageBytes]
	}
	d.Message = strings.ToValidUTF8(d.Message, string(utf8.RuneError))
	return d, nil
}

func isCode(s string) bool {
	if s == "" || len(s) > maxCodeBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
