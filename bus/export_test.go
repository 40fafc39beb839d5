package bus

// SetDirectReplays sets how many per-subject replays may run before replays
// go to the scanner; 0 sends every replay to it. It turns the recent window
// off: every replay reads the stream.
func SetDirectReplays(b *Bus, n int) {
	b.recent.mu.Lock()
	b.recent.state, b.recent.w = recentOff, nil
	b.recent.mu.Unlock()
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

// RecentStats returns the replays the recent window answered and missed.
func RecentStats(b *Bus) (hits, misses uint64) { return b.RecentHits(), b.RecentMisses() }

// RecentReady reports whether the recent window is warm.
func RecentReady(b *Bus) bool {
	b.recent.mu.Lock()
	defer b.recent.mu.Unlock()
	return b.recent.state == recentReady
}

// RecentHeld returns the sequences of tid's events the recent window holds.
func RecentHeld(b *Bus, tid string) []uint64 {
	b.recent.mu.Lock()
	defer b.recent.mu.Unlock()
	if b.recent.state != recentReady {
		return nil
	}
	t := b.recent.w.threads[tid]
	if t == nil {
		return nil
	}
	seqs := make([]uint64, len(t.evs))
	for i, ev := range t.evs {
		seqs[i] = ev.Seq
	}
	return seqs
}

// ClusterServerName is clusterServerName, for its test.
var ClusterServerName = clusterServerName
