package bench

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// meter measures the CPU time the sidecar and this process use during a
// phase, which says whether a figure is bound by CPU on this machine.
type meter struct {
	t       *target
	began   time.Time
	sidecar time.Duration
	self    time.Duration
	ok      bool
}

// cpuUse is what a meter measured.
type cpuUse struct {
	Wall    time.Duration
	Sidecar time.Duration // CPU time of the sidecar process
	Bench   time.Duration // CPU time of this process (clients and baselines)
}

func (t *target) meter(ctx context.Context) *meter {
	m := &meter{t: t, began: time.Now(), self: selfCPU()}
	if u, err := t.usage(ctx); err == nil {
		m.sidecar, m.ok = u.CPU, true
	}
	return m
}

func (m *meter) stop(ctx context.Context) cpuUse {
	c := cpuUse{Wall: time.Since(m.began), Bench: selfCPU() - m.self}
	if u, err := m.t.usage(ctx); err == nil && m.ok {
		c.Sidecar = u.CPU - m.sidecar
	}
	return c
}

func (c cpuUse) String() string {
	cores := func(d time.Duration) float64 { return d.Seconds() / c.Wall.Seconds() }
	return fmt.Sprintf("over %.2fs: sidecar %.2f cores, bench process %.2f cores",
		c.Wall.Seconds(), cores(c.Sidecar), cores(c.Bench))
}

// perMillion is CPU time per million units of work.
func perMillion(d time.Duration, n int) time.Duration {
	if n == 0 {
		return 0
	}
	return time.Duration(float64(d) * 1e6 / float64(n))
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
