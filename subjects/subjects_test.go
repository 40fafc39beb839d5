package subjects

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateThreadID(t *testing.T) {
	valid := []string{"a", "thread_ab12", "T-1", strings.Repeat("x", MaxIDLen), "0123456789", "A_b-C"}
	for _, id := range valid {
		if err := ValidateThreadID(id); err != nil {
			t.Errorf("ValidateThreadID(%q) = %v, want nil", id, err)
		}
	}
	invalid := []string{"", "a.b", "*", ">", "a*", "a>", "a b", " a", "a\t", "a\n", "thread.1", strings.Repeat("x", MaxIDLen+1), "é", "a/b", "a$", "\x00"}
	for _, id := range invalid {
		err := ValidateThreadID(id)
		if !errors.Is(err, ErrInvalidThreadID) {
			t.Errorf("ValidateThreadID(%q) = %v, want ErrInvalidThreadID", id, err)
		}
		if err := ValidateConnID(id); !errors.Is(err, ErrInvalidConnID) {
			t.Errorf("ValidateConnID(%q) = %v, want ErrInvalidConnID", id, err)
		}
	}
}

func TestBuilders(t *testing.T) {
	tests := []struct {
		build func(string) (string, error)
		id    string
		want  string
	}{
		{ThreadOut, "t1", "thread.t1.out"},
		{ThreadIn, "t1", "thread.t1.in"},
		{ConnIn, "c1", "conn.c1.in"},
		{ConnOut, "c1", "conn.c1.out"},
		{ConnBind, "c1", "conn.c1.bind"},
		{ConnAll, "c1", "conn.c1.*"},
		{Live, "t1", "threadbus.live.t1"},
	}
	for _, tt := range tests {
		got, err := tt.build(tt.id)
		if err != nil || got != tt.want {
			t.Errorf("build(%q) = %q, %v; want %q", tt.id, got, err, tt.want)
		}
		if got, err := tt.build("a.>"); err == nil {
			t.Errorf("build(%q) = %q, want an error", "a.>", got)
		}
	}
}

func TestThreadOf(t *testing.T) {
	for subj, want := range map[string]string{
		"thread.t1.out":     "t1",
		"thread.t1.in":      "t1",
		"threadbus.live.t1": "t1",
	} {
		if got, err := ThreadOf(subj); err != nil || got != want {
			t.Errorf("ThreadOf(%q) = %q, %v; want %q", subj, got, err, want)
		}
	}
	for _, subj := range []string{"thread.t1", "thread.t1.x", "thread..out", "threadbus.live.", "threadbus.live.a.b", "conn.c.out", ""} {
		if got, err := ThreadOf(subj); err == nil {
			t.Errorf("ThreadOf(%q) = %q, want an error", subj, got)
		}
	}
}

func TestConnKind(t *testing.T) {
	cid, kind, err := ConnKind("conn.abc.bind")
	if err != nil || cid != "abc" || kind != ConnKindBind {
		t.Fatalf("ConnKind = %q, %q, %v", cid, kind, err)
	}
	for _, subj := range []string{"conn.abc", "conn..out", "conn.a.b.c", "thread.a.out", "conn.a*.out"} {
		if _, _, err := ConnKind(subj); err == nil {
			t.Errorf("ConnKind(%q): want an error", subj)
		}
	}
}

// FuzzValidateThreadID checks that an accepted id always yields subjects with
// exactly the contract's tokens: no wildcard, no extra token, no space.
func FuzzValidateThreadID(f *testing.F) {
	for _, s := range []string{"", "t1", "a.b", "*", ">", "a b", strings.Repeat("z", 129), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateThreadID(id)
		out, berr := ThreadOut(id)
		if (err == nil) != (berr == nil) {
			t.Fatalf("ValidateThreadID and ThreadOut disagree on %q: %v vs %v", id, err, berr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidThreadID) {
				t.Fatalf("error %v does not wrap ErrInvalidThreadID", err)
			}
			return
		}
		if len(id) == 0 || len(id) > MaxIDLen || strings.ContainsAny(id, ".*> \t\r\n") {
			t.Fatalf("accepted bad id %q", id)
		}
		toks := strings.Split(out, ".")
		if len(toks) != 3 || toks[1] != id {
			t.Fatalf("ThreadOut(%q) = %q: wrong tokens", id, out)
		}
		if got, err := ThreadOf(out); err != nil || got != id {
			t.Fatalf("ThreadOf(%q) = %q, %v", out, got, err)
		}
	})
}
