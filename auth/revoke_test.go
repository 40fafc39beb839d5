package auth_test

import (
	"errors"
	"testing"

	"github.com/threadbus/threadbus/auth"
)

func TestParseRevoke(t *testing.T) {
	tests := []struct {
		in           string
		user, thread string
		ok           bool
	}{
		{`{"user":"u-42","thread_id":"thread_ab12"}`, "u-42", "thread_ab12", true},
		{`{"user":"u-42"}`, "u-42", "", true},
		{`{"thread_id":"thread_ab12"}`, "", "thread_ab12", true},
		{`{"user":"","thread_id":""}`, "", "", true},
		{`{}`, "", "", true},
		{` {"user":"u","extra":1} `, "u", "", true},
		{`null`, "", "", false},
		{``, "", "", false},
		{`[]`, "", "", false},
		{`{"user":42}`, "", "", false},
		{`{"thread_id":"a.b"}`, "", "", false},
		{`{"thread_id":"*"}`, "", "", false},
		{`{"user":"a\nb"}`, "", "", false},
		{`{"user":"u"`, "", "", false},
	}
	for _, tt := range tests {
		user, thread, err := auth.ParseRevoke([]byte(tt.in))
		if !tt.ok {
			if !errors.Is(err, auth.ErrInvalidRevoke) {
				t.Errorf("ParseRevoke(%s) = %q, %q, %v; want ErrInvalidRevoke", tt.in, user, thread, err)
			}
			continue
		}
		if err != nil || user != tt.user || thread != tt.thread {
			t.Errorf("ParseRevoke(%s) = %q, %q, %v; want %q, %q", tt.in, user, thread, err, tt.user, tt.thread)
		}
	}
}
