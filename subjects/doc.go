// Package subjects owns every NATS subject threadbus publishes to or
// subscribes on, and the validation of the ids that go into them.
//
// Nothing else in threadbus builds a subject string: callers pass an id that
// ValidateThreadID or ValidateConnID accepted, and get the subject back from a
// builder here. The builders validate again, so an unvalidated string can never
// become part of a subject. All functions are safe for concurrent use.
package subjects
