package main

import (
	"testing"
	"time"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want startAt
		bad  bool
	}{
		{"", startAt{}, false},
		{"0", startAt{}, false},
		{"42", startAt{afterSeq: 42}, false},
		{"5m", startAt{time: now.Add(-5 * time.Minute)}, false},
		{"1h30m", startAt{time: now.Add(-90 * time.Minute)}, false},
		{"2026-05-01T09:00:00Z", startAt{time: now.Add(-time.Hour)}, false},
		{"-5m", startAt{}, true},
		{"0s", startAt{}, true},
		{"-1", startAt{}, true},
		{"yesterday", startAt{}, true},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in, now)
		if tt.bad != (err != nil) || !tt.bad && (got.afterSeq != tt.want.afterSeq || !got.time.Equal(tt.want.time)) {
			t.Errorf("parseSince(%q) = %+v, %v; want %+v (error: %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}
