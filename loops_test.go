package herald_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/history"
	"github.com/heraldmq/herald/store/postgres"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// SQLite has one writer: more than one store loop is a configuration
// error, and so is a negative count; New says so.
func TestStoreLoopsConfig(t *testing.T) {
	t.Parallel()
	for _, n := range []int{-1, 2} {
		cfg := testConfig(t)
		cfg.StoreLoops = n
		if c, err := herald.New(cfg); err == nil || !strings.Contains(err.Error(), "StoreLoops") {
			if c != nil {
				_ = c.Stop(t.Context())
			}
			t.Errorf("New with StoreLoops %d on SQLite: err = %v, want it to name StoreLoops", n, err)
		}
	}
}

// Two store loops of one client on PostgreSQL (the store's default) keep
// per-key order, spread the work over both loops and stay under each
// kind's cap, while enqueues of every key go through either loop; pause
// and resume reach both, and metrics count both.
func TestStoreLoopsPostgres(t *testing.T) {
	t.Parallel()
	drv, err := postgres.Open(t.Context(), pgtest.SchemaURL(t), postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = drv.Close() })
	cfg := testConfig(t)
	cfg.Store, cfg.NodeName, cfg.Workers = drv, "loops", 64
	c := newClient(t, cfg)
	if n := c.StoreLoops(); n != 2 {
		t.Fatalf("StoreLoops() = %d on PostgreSQL by default, want 2", n)
	}
	rec := history.NewRecorder()
	const capped = 3
	var mu sync.Mutex
	owners, running, peak := map[string]int{}, 0, 0
	type payload struct{ Seq int64 }
	mustRegister(t, c, "ordered", func(_ context.Context, j *herald.Job) error {
		var p payload
		if err := json.Unmarshal(j.Payload, &p); err != nil {
			return herald.Permanent(err)
		}
		done := rec.Start(j.ID, j.Key, p.Seq, j.Attempt)
		mu.Lock()
		owners[j.LeaseOwner]++
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		done(history.Succeeded)
		return nil
	}, herald.KindConfig{})
	mustRegister(t, c, "capped", func(context.Context, *herald.Job) error {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	}, herald.KindConfig{Concurrency: capped})
	mustStart(t, c)

	const keys, perKey = 40, 50
	var acks []history.Ack
	var wg sync.WaitGroup
	var ackMu sync.Mutex
	errs := make(chan error, keys)
	for k := range keys {
		wg.Go(func() {
			key := fmt.Sprintf("acct-%d", k)
			for seq := range int64(perKey) {
				r, err := c.Enqueue(t.Context(), herald.EnqueueParams{Kind: "ordered", Key: key, Payload: payload{seq}})
				if err != nil {
					errs <- err
					return
				}
				ackMu.Lock()
				acks = append(acks, history.Ack{ID: r.Job.ID, Key: key, Seq: seq})
				ackMu.Unlock()
			}
		})
	}
	enqueueCapped := func(prefix string, n int) []int64 {
		t.Helper()
		var ids []int64
		for i := range n {
			r, err := c.Enqueue(t.Context(), herald.EnqueueParams{Kind: "capped", Key: fmt.Sprintf("%s-%d", prefix, i)})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, r.Job.ID)
		}
		return ids
	}
	cappedIDs := enqueueCapped("c", 30)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil { // the first producer's failure, if any
		t.Fatal(err)
	}
	for _, a := range acks {
		waitState(t, c, a.ID, herald.StateCompleted)
	}
	for _, id := range cappedIDs {
		waitState(t, c, id, herald.StateCompleted)
	}
	// Pause reaches every loop: a job enqueued while its kind is paused
	// waits whichever loop stores it, and runs after Resume.
	if err := c.Pause("capped"); err != nil {
		t.Fatal(err)
	}
	held := enqueueCapped("p", 4)
	time.Sleep(200 * time.Millisecond)
	for _, id := range held {
		if j, err := c.Get(t.Context(), id); err != nil || j.State != herald.StateAvailable {
			t.Fatalf("job %d of a paused kind: %v, %v; want it available", id, j, err)
		}
	}
	if err := c.Resume("capped"); err != nil {
		t.Fatal(err)
	}
	for _, id := range held {
		waitState(t, c, id, herald.StateCompleted)
	}
	// Metrics add the loops up (a loop counts an outcome just after its
	// commit, which Get may see first).
	waitErr(t, 5*time.Second, func() error {
		m, err := c.Metrics()
		if err != nil {
			return err
		}
		if want := int64(keys*perKey + len(cappedIDs) + len(held)); m.Completed != want || m.ByKind["capped"].Completed != int64(len(cappedIDs)+len(held)) {
			return fmt.Errorf("metrics: %d completed (%d of kind capped); want %d (%d)", m.Completed, m.ByKind["capped"].Completed, want, len(cappedIDs)+len(held))
		}
		return nil
	})
	rep := history.Check(acks, rec.Records(), history.Options{})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// The engine adds a random suffix to each loop's name.
	byLoop := map[string]int{}
	for owner, n := range owners {
		loop, _, _ := strings.Cut(owner, "-")
		byLoop[loop] += n
	}
	if len(byLoop) != 2 || byLoop["loops"] == 0 || byLoop["loops#2"] == 0 {
		t.Errorf("jobs by lease owner: %v; want both loops (loops, loops#2) to run some", owners)
	}
	if peak > capped {
		t.Errorf("kind capped at %d ran %d at once across the loops", capped, peak)
	}
	t.Logf("%s; jobs by loop: %v", rep, owners)
}
