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
	"github.com/heraldmq/herald/clock"
	"github.com/heraldmq/herald/store"
)

// Enqueues racing with Stop either are acknowledged and then survive a
// restart and run, or fail with ErrStopped; nothing in between.
func TestEnqueueDuringStop(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := testConfig(t)
	cfg.DataDir = dir
	c := newClient(t, cfg)
	mustRegister(t, c, "k", func(ctx context.Context, j *herald.Job) error {
		time.Sleep(time.Millisecond)
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)

	var (
		mu    sync.Mutex
		acked = map[int64]string{}
		wg    sync.WaitGroup
	)
	for p := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				key := fmt.Sprintf("p%d", p)
				res, err := c.EnqueueMany(context.Background(), []herald.EnqueueParams{
					{Kind: "k", Key: key}, {Kind: "k", Key: key, Delay: time.Duration(i%3) * time.Millisecond}})
				if errors.Is(err, herald.ErrStopped) {
					return
				}
				if err != nil {
					t.Errorf("EnqueueMany: %v", err)
					return
				}
				mu.Lock()
				for _, r := range res {
					acked[r.Job.ID] = r.Job.Key
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	wg.Wait()
	if len(acked) == 0 {
		t.Fatal("no enqueue was acknowledged before Stop")
	}

	// Restart: every acknowledged job is there and runs.
	c2 := newClient(t, cfg)
	var ran sync.Map
	mustRegister(t, c2, "k", func(_ context.Context, j *herald.Job) error {
		ran.Store(j.ID, true)
		return nil
	}, herald.KindConfig{})
	mustStart(t, c2)
	for id, key := range acked {
		j := waitState(t, c2, id, herald.StateCompleted)
		if j.Key != key {
			t.Errorf("job %d has key %q, want %q", id, j.Key, key)
		}
	}
	all, err := c2.List(t.Context(), herald.ListParams{Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(acked) {
		t.Errorf("%d jobs stored, %d acknowledged: an enqueue that failed with ErrStopped was stored, or one was lost", len(all), len(acked))
	}
}

// A dead letter that blocks its key keeps blocking across a restart.
func TestDiscardBlockSurvivesRestart(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	fail := func(_ context.Context, j *herald.Job) error {
		if string(j.Payload) == `"poison"` {
			return herald.Permanent(errors.New("poison"))
		}
		return nil
	}
	kc := herald.KindConfig{OnDiscard: herald.DiscardBlock}
	c := newClient(t, cfg)
	mustRegister(t, c, "k", fail, kc)
	mustStart(t, c)
	dead := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct", Payload: "poison"}).ID
	next := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct", Payload: "next"}).ID
	waitState(t, c, dead, herald.StateDiscarded)
	stopClient(t, c)

	c2 := newClient(t, cfg)
	var ranNext atomic.Bool
	mustRegister(t, c2, "k", func(ctx context.Context, j *herald.Job) error {
		if j.ID == next {
			ranNext.Store(true)
		}
		return fail(ctx, j)
	}, kc)
	mustStart(t, c2)
	time.Sleep(150 * time.Millisecond)
	if ranNext.Load() {
		t.Fatal("the job behind a blocking dead letter ran after a restart")
	}
	if _, err := c2.Cancel(t.Context(), dead); err != nil {
		t.Fatalf("Cancel(dead letter): %v", err)
	}
	waitState(t, c2, next, herald.StateCompleted)
}

// When the store fails to record outcomes, the engine keeps them and
// retries: the job completes once, and its key moves on.
func TestStoreOutageRetriesOutcomes(t *testing.T) {
	t.Parallel()
	var failures atomic.Int64
	drv := &countingDriver{Driver: openStore(t)}
	drv.failExchange = func(p store.ExchangeParams) error {
		if len(p.Finishes) > 0 && failures.Add(1) <= 3 {
			return fmt.Errorf("injected disk trouble: %w", store.ErrUnavailable)
		}
		return nil
	}
	cfg := testConfig(t)
	cfg.Store = drv
	c := newClient(t, cfg)
	tr := newTracker()
	mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
		defer tr.begin(j)()
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)
	a := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct"}).ID
	b := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct"}).ID
	waitState(t, c, b, herald.StateCompleted)
	if j, _ := c.Get(t.Context(), a); j.State != herald.StateCompleted || j.Attempt != 1 {
		t.Errorf("job %d = %s attempt %d, want completed on attempt 1", a, j.State, j.Attempt)
	}
	if got := tr.startOrder(); fmt.Sprint(got) != fmt.Sprint([]int64{a, b}) {
		t.Errorf("start order %v, want [%d %d] (each once)", got, a, b)
	}
	if failures.Load() < 3 {
		t.Errorf("only %d outcome writes failed; the fault was not exercised", failures.Load())
	}
	waitErr(t, 5*time.Second, func() error {
		m, err := c.Metrics()
		if err == nil && m.Completed != 2 {
			err = fmt.Errorf("Metrics.Completed = %d, want 2", m.Completed)
		}
		return err
	})
}

// An idempotency key maps to its job only within IdempotencyWindow.
func TestIdempotencyWindow(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(fakeStart)
	cfg := testConfig(t)
	cfg.Clock = clk
	cfg.LeaseDuration = time.Hour
	cfg.IdempotencyWindow = time.Hour
	c := newClient(t, cfg)
	mustRegister(t, c, "k", noop, herald.KindConfig{})
	mustStart(t, c)
	p := herald.EnqueueParams{Kind: "k", IdempotencyKey: "charge-1"}
	first, err := c.Enqueue(t.Context(), p)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Minute)
	again, err := c.Enqueue(t.Context(), p)
	if err != nil || !again.Existing || again.Job.ID != first.Job.ID {
		t.Fatalf("within the window: %+v, %v; want the existing job %d", again, err, first.Job.ID)
	}
	clk.Advance(2 * time.Minute)
	later, err := c.Enqueue(t.Context(), p)
	if err != nil || later.Existing || later.Job.ID == first.Job.ID {
		t.Fatalf("after the window: %+v, %v; want a new job", later, err)
	}
}
