// Package gctune keeps the garbage collector from running too often while
// the live heap is small.
//
// herald's live heap is small (tens of MiB: the line memo, the claims, the
// jobs in flight) but it allocates a few KiB per job, so with Go's default
// GOGC=100 a busy node collects dozens of times a second, and each cycle's
// assists and write barriers land on the store loop, which is the
// bottleneck. Raising GOGC for good would multiply the heap when the live
// heap is large (a deep backlog, big payloads in flight). Instead, after
// every collection the tuner sets GOGC so that the next one starts no
// sooner than Headroom bytes of allocation later, and never lower than the
// base percentage: small heaps get room, large heaps keep Go's default
// proportional growth.
package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

const liveMetric = "/gc/heap/live:bytes"

// maxPercent bounds GOGC when the live heap is tiny (a fresh process):
// headroom over a 1 MiB heap would otherwise ask for GOGC in the tens of
// thousands, which is harmless but unreadable in a profile.
const maxPercent = 10000

// Tuner adjusts GOGC after every garbage collection; see the package doc.
type Tuner struct {
	headroom uint64
	base     int
	stopped  atomic.Bool
	mu       sync.Mutex // serializes adjust with Stop's restore
	sample   []metrics.Sample
}

// active is the running tuner: GOGC is process-wide, so there is at most
// one (a second server in one process, as in tests, runs untuned).
var active atomic.Pointer[Tuner]

// Start begins tuning with at least headroom bytes between the live heap
// and the next collection. It returns nil, and changes nothing, when
// headroom <= 0, when the GOGC environment variable is set (an operator's
// explicit choice wins) or when another Tuner is running. The base
// percentage is the GOGC in force when Start is called (100 unless the
// program changed it).
func Start(headroom int64) *Tuner {
	if headroom <= 0 {
		return nil
	}
	if _, set := os.LookupEnv("GOGC"); set {
		return nil
	}
	t := &Tuner{headroom: uint64(headroom), sample: []metrics.Sample{{Name: liveMetric}}}
	if !active.CompareAndSwap(nil, t) {
		return nil
	}
	t.base = debug.SetGCPercent(100)
	debug.SetGCPercent(t.base)
	t.adjust()
	t.arm()
	return t
}

// Stop ends tuning and restores the base GOGC. Nil-safe.
func (t *Tuner) Stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped.Store(true)
	debug.SetGCPercent(t.base)
	active.CompareAndSwap(t, nil)
}

// Percent is the GOGC the tuner would set for a live heap of live bytes.
// Before the first collection the runtime reports no live heap: the base
// applies, since the whole heap would otherwise count as room.
func (t *Tuner) Percent(live uint64) int {
	p := t.base
	if live == 0 {
		return p
	}
	// A GOGC below 1 (or off) is not the tuner's to raise.
	if p < 1 {
		return p
	}
	if want := t.headroom * 100 / live; want > uint64(p) {
		p = int(min(want, maxPercent))
	}
	return p
}

func (t *Tuner) adjust() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.sample)
	var live uint64
	if t.sample[0].Value.Kind() == metrics.KindUint64 {
		live = t.sample[0].Value.Uint64()
	}
	debug.SetGCPercent(t.Percent(live))
}

// sentinel is garbage as soon as it is made: its finalizer runs after the
// next collection, adjusts GOGC to that collection's live heap, and makes
// the next sentinel. (The runtime offers no other end-of-cycle hook.)
type sentinel struct {
	t *Tuner
	_ [16]byte // not a tiny allocation, whose finalizer may never run
}

func (t *Tuner) arm() {
	s := &sentinel{t: t}
	runtime.SetFinalizer(s, func(s *sentinel) {
		if s.t.stopped.Load() {
			return
		}
		s.t.adjust()
		s.t.arm()
	})
}
