package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/store"
)

// doubtfulCommit stands in for a database whose connection breaks during
// COMMIT, which no real server does on demand: its first exchange that
// claims jobs is applied and then reported as store.ErrCommitUnknown.
type doubtfulCommit struct {
	store.Driver
	fired atomic.Bool
}

func (d *doubtfulCommit) Exchange(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, error) {
	res, err := d.Driver.Exchange(ctx, p)
	if err == nil && len(res.Claimed) > 0 && d.fired.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("%w: %w: connection reset during COMMIT", store.ErrUnavailable, store.ErrCommitUnknown)
	}
	return res, err
}

// After a commit whose outcome is unknown, the jobs that cycle claimed
// have no worker. They must not stay leased (and their keys blocked) for
// as long as the engine renews its leases: the engine finds and releases
// them, they run once, in order, and an enqueue caught in that cycle is
// neither stored twice nor reported as refused.
func TestCommitUnknownOrphansAreRescued(t *testing.T) {
	t.Parallel()
	drv := &doubtfulCommit{Driver: openStore(t)}
	cfg := testConfig(t)
	cfg.Store = drv
	cfg.LeaseDuration = 300 * time.Millisecond
	c := newClient(t, cfg)
	var (
		mu   sync.Mutex
		runs []int64
	)
	mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
		mu.Lock()
		defer mu.Unlock()
		runs = append(runs, j.ID)
		return nil
	}, herald.KindConfig{})
	// A long-running job keeps the engine's leases renewed the whole
	// time: the orphan must run all the same.
	release := make(chan struct{})
	mustRegister(t, c, "long", func(ctx context.Context, _ *herald.Job) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)
	defer close(release)

	drv.fired.Store(true) // not yet: the long job's claim goes through
	long := mustEnqueue(t, c, herald.EnqueueParams{Kind: "long", Key: "other"})
	waitState(t, c, long.ID, herald.StateRunning)
	drv.fired.Store(false)

	res, err := c.Enqueue(t.Context(), herald.EnqueueParams{Kind: "k", Key: "a"})
	if err != nil && !errors.Is(err, herald.ErrCommitUnknown) {
		t.Fatalf("Enqueue: %v, want success or ErrCommitUnknown", err)
	}
	if !drv.fired.Load() {
		t.Fatal("the doubtful commit never happened: the test proves nothing")
	}
	next := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "a"})

	waitState(t, c, next.ID, herald.StateCompleted)
	jobs, err := c.List(t.Context(), herald.ListParams{Key: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 {
		t.Fatalf("key a holds %d jobs, want 2 (the doubtful insert stored once, then the next)", len(jobs))
	}
	first := jobs[0]
	if res != nil && res.Job.ID != first.ID {
		t.Errorf("Enqueue answered job %d, but the stored one is %d", res.Job.ID, first.ID)
	}
	if first.State != herald.StateCompleted {
		t.Errorf("orphaned job %d is %s, want completed", first.ID, first.State)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(runs) != 2 || runs[0] != first.ID || runs[1] != next.ID {
		t.Errorf("runs = %v, want [%d %d]: each once, in order", runs, first.ID, next.ID)
	}
}
