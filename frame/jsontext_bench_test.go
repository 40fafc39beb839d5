//go:build goexperiment.jsonv2

package frame

import (
	"bytes"
	"encoding/json/jsontext"
	"strings"
	"sync"
	"testing"

	"github.com/threadbus/threadbus/subjects"
)

// parseJSONText is the routing part of Parse written on
// encoding/json/jsontext (Go 1.26 ships it only with GOEXPERIMENT=jsonv2), to
// measure whether a kept library could replace scan.go on the hot path. It is
// a measurement, not a replacement: it reads type and the thread ids but not
// since and epoch, and checks case variants only at the top level. It walks
// every token to enforce MaxDepth; jsontext itself refuses invalid UTF-8 and
// exact duplicate names (of any key, stricter than Parse). Run:
//
//	GOEXPERIMENT=jsonv2 go test -run XXX -bench 'Parse' ./frame/
func parseJSONText(data []byte) (Client, error) {
	c := Client{Raw: data}
	d := decoders.Get().(*jsontext.Decoder)
	defer decoders.Put(d)
	d.Reset(bytes.NewReader(data))
	if d.PeekKind() != '{' {
		return c, ErrNotObject
	}
	if _, err := d.ReadToken(); err != nil {
		return c, ErrNotJSON
	}
	var typ, top, inner string
	for d.PeekKind() != '}' {
		name, err := d.ReadToken()
		if err != nil {
			return c, ErrNotJSON
		}
		k := name.String()
		switch {
		case k == "type":
			if typ, err = readString(d); err != nil {
				return c, err
			}
		case k == "thread_id":
			if top, err = readString(d); err != nil {
				return c, err
			}
		case k == "payload" && d.PeekKind() == '{':
			d.ReadToken()
			for d.PeekKind() != '}' {
				n, err := d.ReadToken()
				if err != nil {
					return c, ErrNotJSON
				}
				if n.String() == "thread_id" {
					if inner, err = readString(d); err != nil {
						return c, err
					}
				} else if err := skipDepth(d); err != nil {
					return c, err
				}
			}
			d.ReadToken()
		case strings.EqualFold(k, "type") || strings.EqualFold(k, "thread_id") || strings.EqualFold(k, "payload"):
			return c, ErrRepeatedKey
		default:
			if err := skipDepth(d); err != nil {
				return c, err
			}
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return c, ErrNotJSON
	}
	if c.Type = typ; c.Type == "" {
		return c, ErrNotObject
	}
	if c.ThreadID = inner; c.ThreadID == "" {
		c.ThreadID = top
	}
	if c.ThreadID != "" {
		if err := subjects.ValidateThreadID(c.ThreadID); err != nil {
			return c, err
		}
	}
	return c, nil
}

// readString reads a string value (the bytes of a Value read are only
// valid until the next read), "" for null or another kind.
func readString(d *jsontext.Decoder) (string, error) {
	if d.PeekKind() != '"' {
		return "", skipDepth(d)
	}
	tok, err := d.ReadToken()
	if err != nil {
		return "", ErrNotJSON
	}
	return tok.String(), nil
}

var decoders = sync.Pool{New: func() any { return jsontext.NewDecoder(bytes.NewReader(nil)) }}

// skipDepth skips a value token by token, refusing nesting over MaxDepth.
func skipDepth(d *jsontext.Decoder) error {
	base := d.StackDepth()
	for {
		if _, err := d.ReadToken(); err != nil {
			return ErrNotJSON
		}
		if d.StackDepth() > MaxDepth {
			return ErrTooDeep
		}
		if d.StackDepth() == base {
			return nil
		}
	}
}

func BenchmarkParseJSONText(b *testing.B) {
	for _, f := range benchFrames {
		for _, impl := range []struct {
			name  string
			parse func([]byte) (Client, error)
		}{{"scan", Parse}, {"jsontext", parseJSONText}} {
			b.Run(f.name+"/"+impl.name, func(b *testing.B) {
				b.SetBytes(int64(len(f.data)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := impl.parse(f.data); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
