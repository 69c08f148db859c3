package engine

import (
	"sync"
	"sync/atomic"
)

// Metrics are the engine's counters since start. The service exports them
// to Prometheus; gauges come from Running and LastStats.
type Metrics struct {
	Enqueued  atomic.Int64
	Started   atomic.Int64
	Completed atomic.Int64
	Failed    atomic.Int64 // failed attempts, including the ones discarded
	Discarded atomic.Int64
	Released  atomic.Int64 // interrupted by shutdown and returned to their line
	Fenced    atomic.Int64 // outcomes dropped because the lease was lost
	Pruned    atomic.Int64
	// LeaseExpiredBeforeStart counts claimed jobs handed back unrun
	// because the process stalled past their lease before starting them.
	LeaseExpiredBeforeStart atomic.Int64

	byKind sync.Map // string -> *KindMetrics
}

// KindMetrics are one kind's counters and attempt durations.
type KindMetrics struct {
	Enqueued, Started, Completed, Failed, Discarded atomic.Int64
}

func (m *Metrics) kind(name string) *KindMetrics {
	if v, ok := m.byKind.Load(name); ok {
		return v.(*KindMetrics)
	}
	v, _ := m.byKind.LoadOrStore(name, &KindMetrics{})
	return v.(*KindMetrics)
}

// Kind returns the counters of one kind.
func (m *Metrics) Kind(name string) *KindMetrics { return m.kind(name) }

// EachKind calls fn for every kind seen so far.
func (m *Metrics) EachKind(fn func(name string, km *KindMetrics)) {
	m.byKind.Range(func(k, v any) bool {
		fn(k.(string), v.(*KindMetrics))
		return true
	})
}

// Running returns the number of attempts running now.
func (e *Engine) Running() int {
	return int(e.running.Load())
}
