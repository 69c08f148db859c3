package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/clock"
)

// reopen opens a client on dir (not started), for reading what a stopped
// client left on disk.
func reopen(t *testing.T, dir string) *herald.Client {
	t.Helper()
	cfg := testConfig(t)
	cfg.DataDir = dir
	return newClient(t, cfg)
}

func TestGracefulStop(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		dir     string
		client  *herald.Client
		running atomic.Int64
		started chan *herald.Job
		causes  chan error
		release chan struct{} // closing it ends running attempts successfully
	}
	// setup starts a client whose "k" handler runs for d, or until its
	// context is cancelled, and reports that as the attempt's error.
	setup := func(t *testing.T, d time.Duration, clk ...*clock.Fake) *testBundle {
		t.Helper()
		b := &testBundle{dir: t.TempDir(), started: make(chan *herald.Job, 100), causes: make(chan error, 100),
			release: make(chan struct{})}
		cfg := testConfig(t)
		cfg.DataDir = b.dir
		if len(clk) > 0 {
			cfg.Clock = clk[0]
			cfg.LeaseDuration = time.Hour
		}
		b.client = newClient(t, cfg)
		mustRegister(t, b.client, "k", func(ctx context.Context, j *herald.Job) error {
			b.running.Add(1)
			defer b.running.Add(-1)
			b.started <- j
			select {
			case <-time.After(d):
				return nil
			case <-b.release:
				return nil
			case <-ctx.Done():
				b.causes <- ctx.Err()
				return ctx.Err()
			}
		}, herald.KindConfig{})
		mustStart(t, b.client)
		return b
	}
	waitStarted := func(t *testing.T, b *testBundle, n int) []*herald.Job {
		t.Helper()
		var jobs []*herald.Job
		for range n {
			select {
			case j := <-b.started:
				jobs = append(jobs, j)
			case <-time.After(10 * time.Second):
				t.Fatalf("only %d of %d jobs started", len(jobs), n)
			}
		}
		return jobs
	}

	t.Run("WaitsForRunningJobs", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 200*time.Millisecond)
		id := mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: "a"}).ID
		waitStarted(t, b, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.client.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if n := b.running.Load(); n != 0 {
			t.Fatalf("%d handlers still running after Stop returned", n)
		}
		if len(b.causes) != 0 {
			t.Errorf("a handler was interrupted although Stop's context had time: %v", <-b.causes)
		}
		j, err := reopen(t, b.dir).Get(t.Context(), id)
		if err != nil || j.State != herald.StateCompleted || j.Attempt != 1 {
			t.Errorf("after Stop: %+v, %v; want completed on attempt 1", j, err)
		}
	})

	t.Run("DeadlineInterruptsAndReleases", func(t *testing.T) {
		t.Parallel()
		b := setup(t, time.Hour)
		var ids []int64
		for i := range 3 {
			// Key a has two jobs: the second waits behind the first.
			key := []string{"a", "a", "b"}[i]
			ids = append(ids, mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: key, MaxAttempts: 1}).ID)
		}
		waitStarted(t, b, 2)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		err := b.client.Stop(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Stop = %v, want an error wrapping context.DeadlineExceeded", err)
		}
		if n := b.running.Load(); n != 0 {
			t.Fatalf("%d handlers still running after Stop returned", n)
		}
		if n := len(b.causes); n != 2 {
			t.Errorf("%d handler contexts were cancelled, want 2", n)
		}
		if _, err := b.client.Enqueue(t.Context(), herald.EnqueueParams{Kind: "k"}); !errors.Is(err, herald.ErrStopped) {
			t.Errorf("Enqueue after Stop = %v, want ErrStopped", err)
		}

		// On disk the interrupted jobs are pending again, their attempt
		// not consumed (MaxAttempts 1 would otherwise discard them).
		r := reopen(t, b.dir)
		for _, id := range ids {
			j, err := r.Get(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			if j.State != herald.StateAvailable || j.Attempt != 0 || len(j.Errors) != 0 {
				t.Errorf("job %d after an interrupted stop: %s attempt %d errors %v; want available, attempt 0, no errors",
					id, j.State, j.Attempt, j.Errors)
			}
		}
		stopClient(t, r)

		// A restarted client runs them, in order, as first attempts.
		b2 := &testBundle{started: make(chan *herald.Job, 10)}
		cfg := testConfig(t)
		cfg.DataDir = b.dir
		c2 := newClient(t, cfg)
		tr := newTracker()
		mustRegister(t, c2, "k", func(_ context.Context, j *herald.Job) error {
			defer tr.begin(j)()
			b2.started <- j
			return nil
		}, herald.KindConfig{})
		mustStart(t, c2)
		for _, j := range waitStarted(t, b2, 3) {
			if j.Attempt != 1 {
				t.Errorf("job %d rerun as attempt %d, want 1 (interruption must not consume an attempt)", j.ID, j.Attempt)
			}
		}
		for _, id := range ids {
			waitState(t, c2, id, herald.StateCompleted)
		}
		order := tr.startOrder()
		pos := map[int64]int{}
		for i, id := range order {
			pos[id] = i
		}
		if pos[ids[0]] > pos[ids[1]] {
			t.Errorf("after restart key a ran %v, want %d before %d", order, ids[0], ids[1])
		}
	})

	// A job finished after the stop began (within the deadline) is
	// recorded as completed, not released.
	t.Run("FinishesWithinDeadline", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 50*time.Millisecond)
		var ids []int64
		for i := range 5 {
			ids = append(ids, mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: fmt.Sprintf("k%d", i)}).ID)
		}
		waitStarted(t, b, 5)
		stopClient(t, b.client)
		r := reopen(t, b.dir)
		for _, id := range ids {
			if j, err := r.Get(t.Context(), id); err != nil || j.State != herald.StateCompleted {
				t.Errorf("job %d = %+v, %v; want completed", id, j, err)
			}
		}
	})

	// Stop takes no new work: jobs enqueued but not started stay pending.
	t.Run("DrainStopsStartsButTakesEnqueues", func(t *testing.T) {
		t.Parallel()
		b := setup(t, time.Hour)
		first := mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: "a"}).ID
		waitStarted(t, b, 1)
		b.client.Drain()
		// Enqueues are still stored; neither they nor the running job's
		// successor start, even once it has finished.
		second := mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: "a"}).ID
		other := mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: "b"}).ID
		close(b.release)
		waitFor(t, 10*time.Second, "the running job to finish", func() bool {
			j, err := b.client.Get(t.Context(), first)
			return err == nil && j.State == herald.StateCompleted
		})
		time.Sleep(200 * time.Millisecond) // the engine's chance to start something
		if len(b.started) != 0 {
			t.Fatalf("job %d started after Drain", (<-b.started).ID)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.client.Stop(ctx); err != nil {
			t.Fatalf("Stop after Drain: %v", err)
		}
		r := reopen(t, b.dir)
		for _, id := range []int64{second, other} {
			if j, err := r.Get(t.Context(), id); err != nil || j.State != herald.StateAvailable || j.Attempt != 0 {
				t.Errorf("job %d enqueued after Drain = %+v, %v; want stored, available, not started", id, j, err)
			}
		}
	})

	t.Run("NoNewStartsAfterStop", func(t *testing.T) {
		t.Parallel()
		clk := clock.NewFake(fakeStart)
		b := setup(t, time.Hour, clk)
		first := mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: "a"}).ID
		second := mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Key: "a"}).ID
		unordered := mustEnqueue(t, b.client, herald.EnqueueParams{Kind: "k", Delay: time.Minute}).ID
		waitStarted(t, b, 1)
		stopped := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stopped <- b.client.Stop(ctx)
		}()
		// Once Enqueue is refused, Stop has begun. Give the engine a moment
		// to see it, let the scheduled job come due, then let the running
		// job finish: neither its successor nor the scheduled job may start.
		waitFor(t, 10*time.Second, "Stop to begin", func() bool {
			_, err := b.client.Enqueue(t.Context(), herald.EnqueueParams{Kind: "k", Delay: time.Hour}) // never due here
			return errors.Is(err, herald.ErrStopped)
		})
		stopBegun := clk.Now()
		for range 10 {
			clk.Advance(10 * time.Second) // the scheduled job comes due
			time.Sleep(10 * time.Millisecond)
		}
		select {
		case err := <-stopped:
			t.Fatalf("Stop returned (%v) while a job was still running", err)
		default:
		}
		close(b.release)
		if err := <-stopped; err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if len(b.started) != 0 {
			j := <-b.started
			t.Errorf("job %d (key %q, run at %s) started at %s, %s after Stop began",
				j.ID, j.Key, j.RunAt.Format(time.TimeOnly), j.StartedAt.Format(time.TimeOnly), j.StartedAt.Sub(stopBegun))
		}
		r := reopen(t, b.dir)
		if j, _ := r.Get(t.Context(), first); j.State != herald.StateCompleted {
			t.Errorf("running job = %s after Stop, want completed", j.State)
		}
		if j, _ := r.Get(t.Context(), second); j.State != herald.StateAvailable || j.Attempt != 0 {
			t.Errorf("waiting job = %s attempt %d after Stop, want available attempt 0", j.State, j.Attempt)
		}
		if j, _ := r.Get(t.Context(), unordered); j.State.Finalized() || j.Attempt != 0 {
			t.Errorf("scheduled job = %s attempt %d after Stop, want not started", j.State, j.Attempt)
		}
	})
}

// Completed and cancelled jobs are pruned after CompletedRetention; dead
// letters after DiscardedRetention, except one that blocks its key.
func TestRetention(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name       string
		completed  time.Duration
		discarded  time.Duration
		wantGone   []string // job names pruned
		wantKept   []string // job names still there after several maintenance runs
		wantPruned int64
	}{
		{"PrunesCompleted", 50 * time.Millisecond, -1, []string{"ok", "cancelled"}, []string{"dead", "blocking"}, 2},
		{"PrunesDiscarded", -1, 50 * time.Millisecond, []string{"dead"}, []string{"ok", "cancelled", "blocking"}, 1},
		{"PrunesBoth", 50 * time.Millisecond, 50 * time.Millisecond, []string{"ok", "cancelled", "dead"}, []string{"blocking"}, 3},
		{"KeepsForever", -1, -1, nil, []string{"ok", "cancelled", "dead", "blocking"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			cfg.CompletedRetention = tt.completed
			cfg.DiscardedRetention = tt.discarded
			cfg.MaintenanceInterval = 20 * time.Millisecond
			c := newClient(t, cfg)
			fail := func(context.Context, *herald.Job) error { return herald.Permanent(errors.New("no")) }
			mustRegister(t, c, "ok", noop, herald.KindConfig{})
			mustRegister(t, c, "dead", fail, herald.KindConfig{})
			mustRegister(t, c, "blocking", fail, herald.KindConfig{OnDiscard: herald.DiscardBlock})
			mustStart(t, c)
			ids := map[string]int64{
				"ok":        mustEnqueue(t, c, herald.EnqueueParams{Kind: "ok", Key: "a"}).ID,
				"dead":      mustEnqueue(t, c, herald.EnqueueParams{Kind: "dead", Key: "b"}).ID,
				"blocking":  mustEnqueue(t, c, herald.EnqueueParams{Kind: "blocking", Key: "c"}).ID,
				"cancelled": mustEnqueue(t, c, herald.EnqueueParams{Kind: "ok", Key: "d", Delay: time.Hour}).ID,
			}
			if _, err := c.Cancel(t.Context(), ids["cancelled"]); err != nil {
				t.Fatal(err)
			}
			// With a short retention a finished job may vanish before a
			// poll sees it finished: wait for either.
			for _, name := range []string{"ok", "dead"} {
				waitErr(t, 10*time.Second, func() error {
					j, err := c.Get(t.Context(), ids[name])
					if errors.Is(err, herald.ErrNotFound) || (err == nil && j.State.Finalized()) {
						return nil
					}
					return fmt.Errorf("job %q not finished: %+v, %w", name, j, err)
				})
			}
			waitState(t, c, ids["blocking"], herald.StateDiscarded)
			for _, name := range tt.wantGone {
				waitErr(t, 10*time.Second, func() error {
					j, err := c.Get(t.Context(), ids[name])
					if errors.Is(err, herald.ErrNotFound) {
						return nil
					}
					return fmt.Errorf("job %q not pruned: %+v, %w", name, j, err)
				})
			}
			time.Sleep(150 * time.Millisecond) // several maintenance runs
			for _, name := range tt.wantKept {
				if _, err := c.Get(t.Context(), ids[name]); err != nil {
					t.Errorf("job %q was pruned: %v", name, err)
				}
			}
			if m, _ := c.Metrics(); m.Pruned != tt.wantPruned {
				t.Errorf("Metrics.Pruned = %d, want %d", m.Pruned, tt.wantPruned)
			}
		})
	}
}

// Retention is measured on the injected clock.
func TestRetentionFakeClock(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(fakeStart)
	cfg := testConfig(t)
	cfg.Clock = clk
	cfg.LeaseDuration = time.Hour
	cfg.CompletedRetention = time.Hour
	cfg.MaintenanceInterval = time.Minute
	c := newClient(t, cfg)
	mustRegister(t, c, "k", noop, herald.KindConfig{})
	mustStart(t, c)
	id := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "a"}).ID
	j := waitState(t, c, id, herald.StateCompleted)
	if !j.FinishedAt.Equal(fakeStart) {
		t.Errorf("FinishedAt = %s, want the fake clock's %s", j.FinishedAt, fakeStart)
	}
	// Just under an hour later (with maintenance runs on the way) the job
	// is still there.
	for range 59 {
		clk.Advance(time.Minute)
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := c.Get(t.Context(), id); err != nil {
		t.Fatalf("job pruned before its retention passed: %v", err)
	}
	advanceUntil(t, clk, time.Minute, "the job to be pruned", func() bool {
		_, err := c.Get(t.Context(), id)
		return errors.Is(err, herald.ErrNotFound)
	})
	if now := clk.Now(); now.Before(fakeStart.Add(time.Hour)) {
		t.Errorf("pruned at %s, before the hour passed", now)
	}
}
