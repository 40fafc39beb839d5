package bus

// SetDirectReplays sets how many per-subject replays may run before replays
// go to the scanner; 0 sends every replay to it.
func SetDirectReplays(b *Bus, n int) {
	b.scan.mu.Lock()
	defer b.scan.mu.Unlock()
	b.scan.directMax = n
}

// ScanStats returns how many scan passes ran and how many messages they read.
func ScanStats(b *Bus) (passes, scanned uint64) { return b.ScanPasses(), b.ScannedMessages() }

const ScanMaxEvents = scanMaxEvents

var (
	ReconcileStream = reconcileStream
	SubjectCovers   = subjectCovers
)

// ResyncFailures counts the resync reads that failed and were retried.
func ResyncFailures(b *Bus) uint64 { return b.hub.resyncFails.Load() }
