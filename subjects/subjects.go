package subjects

import (
	"errors"
	"fmt"
	"strings"
)

// Stream is the JetStream stream that stores every thread's frames and events.
const Stream = "THREADS"

// Subject templates of the wire contract. Each %s is a validated id.
const (
	threadOutT = "thread.%s.out" // agents -> connections bound to the thread; stored, replayed
	threadInT  = "thread.%s.in"  // client frames of bound connections; stored
	connInT    = "conn.%s.in"    // client frames of unbound connections; not stored
	connOutT   = "conn.%s.out"   // a frame for one connection; not stored
	connBindT  = "conn.%s.bind"  // request: bind the connection to a thread
	connCloseT = "conn.%s.close" // request: close the connection
	connAllT   = "conn.%s.*"     // everything addressed to one connection
	liveT      = "threadbus.live.%s"
)

// Wildcards the stream and the live republish are configured with.
const (
	ThreadOutAll = "thread.*.out"
	ThreadInAll  = "thread.*.in"

	// LiveAll is where the stream republishes every stored thread.*.out
	// message, with the headers Nats-Sequence, Nats-Time-Stamp and
	// Nats-Last-Sequence. Sidecars subscribe to one thread of it at a time.
	LiveAll = "threadbus.live.*"
	// LiveRepublishDest is the RePublish destination mapping thread.<tid>.out
	// onto threadbus.live.<tid>.
	LiveRepublishDest = "threadbus.live.{{wildcard(1)}}"
)

// StreamMsgGet is the JetStream API subject of a message get from the
// THREADS stream that its leader answers (unlike a direct get, which any
// replica may answer, however far behind it is).
const StreamMsgGet = "$JS.API.STREAM.MSG.GET." + Stream

// Kinds of message addressed to a connection (the last token of conn.<cid>.*).
const (
	ConnKindIn    = "in"
	ConnKindOut   = "out"
	ConnKindBind  = "bind"
	ConnKindClose = "close"
)

// Authorization subjects of contract v2.
const (
	// AuthzBind is where a sidecar asks the backend (a NATS request, usually
	// answered by a queue group) whether a user may bind a thread.
	AuthzBind = "threadbus.authz.bind"
	// AuthzRevoke carries {"user":U,"thread_id":T}: every sidecar forgets
	// the matching allowed pairs and unbinds the matching connections.
	AuthzRevoke = "threadbus.authz.revoke"
)

// ThreadOut returns thread.<tid>.out.
func ThreadOut(tid string) (string, error) { return build(threadOutT, "thread", tid) }

// ThreadIn returns thread.<tid>.in.
func ThreadIn(tid string) (string, error) { return build(threadInT, "thread", tid) }

// ConnIn returns conn.<cid>.in.
func ConnIn(cid string) (string, error) { return build(connInT, "connection", cid) }

// ConnOut returns conn.<cid>.out.
func ConnOut(cid string) (string, error) { return build(connOutT, "connection", cid) }

// ConnBind returns conn.<cid>.bind.
func ConnBind(cid string) (string, error) { return build(connBindT, "connection", cid) }

// ConnClose returns conn.<cid>.close.
func ConnClose(cid string) (string, error) { return build(connCloseT, "connection", cid) }

// ConnAll returns conn.<cid>.*, which matches ConnOut, ConnBind and ConnIn.
func ConnAll(cid string) (string, error) { return build(connAllT, "connection", cid) }

// Live returns the subject the stream republishes thread.<tid>.out to.
func Live(tid string) (string, error) { return build(liveT, "thread", tid) }

func build(tmpl, what, id string) (string, error) {
	if err := validate(what, id); err != nil {
		return "", err
	}
	return fmt.Sprintf(tmpl, id), nil
}

// ConnKind returns the connection id and the kind (ConnKindOut, ...) of a
// subject of the form conn.<cid>.<kind>.
func ConnKind(subject string) (cid, kind string, err error) {
	rest, ok := strings.CutPrefix(subject, "conn.")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not a connection subject", ErrInvalidSubject, subject)
	}
	cid, kind, ok = strings.Cut(rest, ".")
	if !ok || strings.Contains(kind, ".") {
		return "", "", fmt.Errorf("%w: %q is not a connection subject", ErrInvalidSubject, subject)
	}
	if err := ValidateConnID(cid); err != nil {
		return "", "", err
	}
	return cid, kind, nil
}

// ThreadOf returns the thread id of thread.<tid>.out, thread.<tid>.in or
// threadbus.live.<tid>.
func ThreadOf(subject string) (string, error) {
	var tid string
	if rest, ok := strings.CutPrefix(subject, "threadbus.live."); ok {
		tid = rest
	} else if rest, ok := strings.CutPrefix(subject, "thread."); ok {
		var dir string
		tid, dir, ok = strings.Cut(rest, ".")
		if !ok || (dir != "in" && dir != "out") {
			tid = ""
		}
	}
	if tid == "" {
		return "", fmt.Errorf("%w: %q is not a thread subject", ErrInvalidSubject, subject)
	}
	if err := ValidateThreadID(tid); err != nil {
		return "", err
	}
	return tid, nil
}

// ErrInvalidSubject is returned by the parsers for a subject outside the contract.
var ErrInvalidSubject = errors.New("invalid subject")
