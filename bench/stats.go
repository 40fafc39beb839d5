package bench

import (
	"math"
	"slices"
	"time"
)

// samples are durations measured in one phase.
type samples []time.Duration

// quantile returns the q-quantile (0 < q <= 1) by the nearest-rank method:
// the smallest sample that at least q of them do not exceed. It sorts s.
func (s samples) quantile(q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	slices.Sort(s)
	rank := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(rank, len(s)-1))]
}

// summary is the percentiles the report shows of a latency distribution.
type summary struct {
	N                   int
	P50, P99, P999, Max time.Duration
	Mean                time.Duration
}

func summarize(s samples) summary {
	if len(s) == 0 {
		return summary{}
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return summary{
		N:    len(s),
		P50:  s.quantile(0.50),
		P99:  s.quantile(0.99),
		P999: s.quantile(0.999),
		Max:  s.quantile(1),
		Mean: sum / time.Duration(len(s)),
	}
}

// perSecond is n per elapsed second; 0 for no time.
func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// ratio is a/b, or NaN when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}
