package frame

import (
	"bytes"
	"encoding/json"
	"strings"
)

// members are the values Parse reads from a frame, as found by scanFrame.
type members struct {
	object  bool // the frame is a JSON object
	typ     span // top-level "type"
	tid     span // top-level "thread_id"
	payload struct {
		// Members of the last top-level "payload", when that is an object.
		tid, since, epoch span
	}
	// repeated is set when a routing key appears twice, or in another
	// case, at the top level or in the payload object.
	repeated bool
	// tooDeep is set when the scan stopped at a container nested deeper
	// than MaxDepth.
	tooDeep bool
	// seen has a bit per routing key met at the top level, and
	// seenPayload per one met in the payload object.
	seen, seenPayload uint8
}

// span is where a value lies in a frame; the zero span is an absent value.
type span struct {
	start, end int
	// plain is set for a string with neither escapes nor non-ASCII bytes,
	// whose content is its bytes between the quotes.
	plain bool
}

// in returns the value's bytes, nil when absent.
func (v span) in(data []byte) []byte { return data[v.start:v.end] }

// text decodes a string value as json.Unmarshal would; ok is false when the
// value is absent or not a string.
func (v span) text(data []byte) (string, bool) {
	raw := v.in(data)
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	if v.plain {
		return string(raw[1 : len(raw)-1]), true
	}
	return unescape(raw)
}

// unescape decodes a JSON string that needs it; kept apart so that the
// plain path does not pay for a heap-allocated result.
func unescape(raw []byte) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false // unreachable: the scanner accepted the string
	}
	return s, true
}

// frameType decodes "type" as Parse wants it: "" unless a string, and the
// shared constant for the common types so they cost no allocation.
func (v span) frameType(data []byte) string {
	if v.plain {
		switch raw := v.in(data); string(raw[1 : len(raw)-1]) {
		case TypePing:
			return TypePing
		case TypeSwitchThread:
			return TypeSwitchThread
		case "user_message":
			return "user_message"
		case "start_agent":
			return "start_agent"
		case "stop_agent":
			return "stop_agent"
		}
	}
	s, _ := v.text(data)
	return s
}

// scanFrame reports whether data is valid JSON nested at most MaxDepth
// deep, accepting exactly what json.Valid accepts up to that depth, and
// when it is an object records in f the members Parse reads. Keys compare
// as decoding into a map does: exactly, after unescaping, the last
// duplicate winning; f.repeated tells when a routing key was repeated or
// spelt in another case. When it returns false for depth, f.tooDeep is set.
func scanFrame(data []byte, f *members) bool {
	s := scanner{data: data, f: f}
	s.space()
	if s.i < len(data) && data[s.i] == '{' {
		f.object = true
		if !s.object(1, f, true) {
			return false
		}
	} else if !s.value(0) {
		return false
	}
	s.space()
	return s.i == len(data)
}

// scanner walks a frame byte by byte; each method validates one production
// of the JSON grammar as encoding/json's scanner does and moves past it.
type scanner struct {
	data []byte
	i    int
	f    *members
}

func (s *scanner) space() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// Keys Parse looks for, which are also the routing keys.
const (
	keyOther = iota
	keyType
	keyThreadID
	keyPayload
	keySince
	keyEpoch
	keyCount
)

var keyNames = [keyCount]string{keyType: "type", keyThreadID: "thread_id", keyPayload: "payload", keySince: "since", keyEpoch: "epoch"}

// keyOf names the key whose quoted form is raw; exact is false when the
// key only matches in another case (as strings.EqualFold decides, which
// folds "ſ" to "s" as Go's encoding/json does).
func keyOf(raw []byte) (key int, exact bool) {
	name := raw[1 : len(raw)-1]
	for _, c := range name {
		if c == '\\' || c >= 0x80 {
			return keyOfText(raw) // rare: escapes or non-ASCII
		}
	}
	switch string(name) {
	case "type":
		return keyType, true
	case "thread_id":
		return keyThreadID, true
	case "payload":
		return keyPayload, true
	case "since":
		return keySince, true
	case "epoch":
		return keyEpoch, true
	}
	if len(name) > len("thread_id") {
		return keyOther, false
	}
	for k := keyType; k < keyCount; k++ {
		if bytes.EqualFold(name, []byte(keyNames[k])) {
			return k, false
		}
	}
	return keyOther, false
}

// keyOfText is keyOf for a key with escapes or non-ASCII bytes, unescaped
// as encoding/json does.
func keyOfText(raw []byte) (key int, exact bool) {
	name, ok := unescape(raw)
	if !ok {
		return keyOther, false
	}
	for k := keyType; k < keyCount; k++ {
		if name == keyNames[k] {
			return k, true
		}
		if strings.EqualFold(name, keyNames[k]) {
			return k, false
		}
	}
	return keyOther, false
}

// routing reports whether key is a routing key of the top level (top) or
// of the payload object.
func routing(key int, top bool) bool {
	if top {
		return key != keyOther
	}
	return key == keyThreadID || key == keySince || key == keyEpoch
}

// note records that a routing key was met, flagging a repeat or a case
// variant.
func (f *members) note(key int, exact, top bool) {
	seen := &f.seenPayload
	if top {
		seen = &f.seen
	}
	bit := uint8(1) << key
	if !exact || *seen&bit != 0 {
		f.repeated = true
	}
	*seen |= bit
}

// object scans the object at s.i, the depth-th nested container, recording
// the members Parse reads: the top level's when top, else the payload's.
func (s *scanner) object(depth int, f *members, top bool) bool {
	d := s.data
	s.i++ // '{'
	s.space()
	if s.i < len(d) && d[s.i] == '}' {
		s.i++
		return true
	}
	for {
		if s.i >= len(d) || d[s.i] != '"' {
			return false
		}
		start := s.i
		if _, ok := s.str(); !ok {
			return false
		}
		key, exact := keyOf(d[start:s.i])
		if routing(key, top) {
			f.note(key, exact, top)
			if !exact {
				key = keyOther // the frame is refused: record nothing
			}
		}
		s.space()
		if s.i >= len(d) || d[s.i] != ':' {
			return false
		}
		s.i++
		s.space()
		if s.i >= len(d) {
			return false
		}
		if top && key == keyPayload {
			if !s.payload(depth, f) {
				return false
			}
		} else if !s.member(depth, f.slot(key, top)) {
			return false
		}
		s.space()
		if s.i >= len(d) {
			return false
		}
		switch d[s.i] {
		case ',':
			s.i++
			s.space()
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

// slot is where object records the value of a key, nil for keys Parse
// does not read.
func (f *members) slot(key int, top bool) *span {
	switch {
	case top && key == keyType:
		return &f.typ
	case top && key == keyThreadID:
		return &f.tid
	case !top && key == keyThreadID:
		return &f.payload.tid
	case !top && key == keySince:
		return &f.payload.since
	case !top && key == keyEpoch:
		return &f.payload.epoch
	}
	return nil
}

// member scans the value at s.i of a member of an object at depth and
// records where it lies in dst, unless dst is nil.
func (s *scanner) member(depth int, dst *span) bool {
	start := s.i
	if s.data[start] == '"' {
		plain, ok := s.str()
		if ok && dst != nil {
			*dst = span{start, s.i, plain}
		}
		return ok
	}
	if !s.value(depth) {
		return false
	}
	if dst != nil {
		*dst = span{start: start, end: s.i}
	}
	return true
}

// payload scans the value of a top-level "payload" member. Like a later
// map decode, it forgets the members of any earlier "payload".
func (s *scanner) payload(depth int, f *members) bool {
	f.payload.tid, f.payload.since, f.payload.epoch = span{}, span{}, span{}
	if s.data[s.i] != '{' {
		return s.value(depth)
	}
	if depth+1 > MaxDepth {
		f.tooDeep = true
		return false
	}
	return s.object(depth+1, f, false)
}

// value scans any JSON value at s.i, inside depth containers. Nested
// containers are tracked on a stack of their closing bytes rather than by
// recursion, so a deeply nested frame cannot grow the goroutine stack.
func (s *scanner) value(depth int) bool {
	d := s.data
	var buf [MaxDepth]byte
	open := buf[:0]
	for {
		s.space()
		if s.i >= len(d) {
			return false
		}
		switch c := d[s.i]; c {
		case '{', '[':
			if depth+len(open)+1 > MaxDepth {
				s.f.tooDeep = true
				return false
			}
			s.i++
			s.space()
			end := byte('}')
			if c == '[' {
				end = ']'
			}
			if s.i < len(d) && d[s.i] == end {
				s.i++
				break // an empty container is a complete value
			}
			open = append(open, end)
			if c == '{' && !s.key() {
				return false
			}
			continue // to the first element
		case '"':
			if _, ok := s.str(); !ok {
				return false
			}
		case 't':
			if !s.literal("true") {
				return false
			}
		case 'f':
			if !s.literal("false") {
				return false
			}
		case 'n':
			if !s.literal("null") {
				return false
			}
		default:
			if !s.number() {
				return false
			}
		}
		// A value is complete: close the containers it completes, up to
		// one that continues with another element.
		for {
			if len(open) == 0 {
				return true
			}
			s.space()
			if s.i >= len(d) {
				return false
			}
			end := open[len(open)-1]
			if d[s.i] == ',' {
				s.i++
				if end == '}' && !s.key() {
					return false
				}
				break
			}
			if d[s.i] != end {
				return false
			}
			s.i++
			open = open[:len(open)-1]
		}
	}
}

// key scans an object key and its colon, with the space around them.
func (s *scanner) key() bool {
	s.space()
	if s.i >= len(s.data) || s.data[s.i] != '"' {
		return false
	}
	if _, ok := s.str(); !ok {
		return false
	}
	s.space()
	if s.i >= len(s.data) || s.data[s.i] != ':' {
		return false
	}
	s.i++
	return true
}

// str scans the string at s.i (its opening quote). plain reports neither
// escapes nor non-ASCII bytes. Like encoding/json it accepts invalid UTF-8,
// which decoding replaces with U+FFFD.
func (s *scanner) str() (plain, ok bool) {
	d := s.data
	plain = true
	for i := s.i + 1; i < len(d); {
		c := d[i]
		switch {
		case c == '"':
			s.i = i + 1
			return plain, true
		case c == '\\':
			plain = false
			if i+1 >= len(d) {
				return false, false
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+5 >= len(d) || !isHex(d[i+2]) || !isHex(d[i+3]) || !isHex(d[i+4]) || !isHex(d[i+5]) {
					return false, false
				}
				i += 6
			default:
				return false, false
			}
		case c < 0x20:
			return false, false
		default:
			if c >= 0x80 {
				plain = false
			}
			i++
		}
	}
	return false, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (s *scanner) literal(lit string) bool {
	if !bytes.HasPrefix(s.data[s.i:], []byte(lit)) {
		return false
	}
	s.i += len(lit)
	return true
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *scanner) number() bool {
	d, i := s.data, s.i
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i >= len(d):
		return false
	case d[i] == '0':
		i++
	case '1' <= d[i] && d[i] <= '9':
		for i++; i < len(d) && isDigit(d[i]); i++ {
		}
	default:
		return false
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || !isDigit(d[i]) {
			return false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			return false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	s.i = i
	return true
}
