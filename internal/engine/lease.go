package engine

import (
	"context"
	"sync"
	"time"
)

// leases tracks how long this engine's claims stay valid without asking
// the store. A claim is valid until its own lease end; renewals extend
// every claim still valid when they happen, and a renewal that comes too
// late (the process stalled past its leases: SIGSTOP, a frozen VM) starts
// a new chain that extends only claims made since.
type leases struct {
	mu sync.Mutex
	// chainStart is when the current unbroken chain of renewals began;
	// until is when its last renewal runs out.
	chainStart, until time.Time
}

// renewed records a successful renewal that started at t, for d.
func (l *leases) renewed(t time.Time, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.until.IsZero() || !t.Before(l.until) {
		l.chainStart = t
	}
	l.until = t.Add(d)
}

// held reports whether a claim whose own lease ends at claimEnd is still
// valid at now.
func (l *leases) held(claimEnd, now time.Time) bool {
	if now.Before(claimEnd) {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// Renewals extended the claim only if their chain began while it was
	// still valid.
	return !l.until.IsZero() && l.chainStart.Before(claimEnd) && now.Before(l.until)
}

type leaseKey struct{}

// LeaseHeld reports whether the running attempt's lease still holds, by
// this process's reckoning. A handler about to do something that must not
// happen twice or out of order (send a request, an email) can check it
// last: after a stall longer than the lease, the job may already run on
// another node. Outside an attempt it reports true.
func LeaseHeld(ctx context.Context) bool {
	held, ok := ctx.Value(leaseKey{}).(func() bool)
	return !ok || held()
}
