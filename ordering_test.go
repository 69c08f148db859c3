package herald_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/clock"
)

// Jobs of one key start in enqueue order, one at a time; different keys
// interleave freely.
func TestPerKeyFIFO(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		keys    int
		perKey  int
		workers int
		batch   int // jobs per EnqueueMany; 1 uses Enqueue
		sleep   time.Duration
	}{
		{"OneKeyManyWorkers", 1, 40, 50, 1, time.Millisecond},
		{"ManyKeysBatches", 8, 15, 20, 7, time.Millisecond},
		{"ManyKeysFewWorkers", 8, 10, 2, 1, 0},
		{"ConcurrentProducers", 5, 20, 10, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			cfg.Workers = tt.workers
			c := newClient(t, cfg)
			tr := newTracker()
			mustRegister(t, c, "k", func(ctx context.Context, j *herald.Job) error {
				end := tr.begin(j)
				defer end()
				time.Sleep(tt.sleep)
				return nil
			}, herald.KindConfig{})
			mustStart(t, c)

			want := map[string][]int64{}
			var mu sync.Mutex
			if tt.name == "ConcurrentProducers" {
				// One producer per key, all at once: order per key is the
				// order each producer got its acks.
				var wg sync.WaitGroup
				for k := range tt.keys {
					key := fmt.Sprintf("key-%d", k)
					wg.Go(func() {
						for range tt.perKey {
							res, err := c.Enqueue(context.Background(), herald.EnqueueParams{Kind: "k", Key: key})
							if err != nil {
								t.Errorf("Enqueue: %v", err)
								return
							}
							mu.Lock()
							want[key] = append(want[key], res.Job.ID)
							mu.Unlock()
						}
					})
				}
				wg.Wait()
			} else {
				var ps []herald.EnqueueParams
				flush := func() {
					res, err := c.EnqueueMany(t.Context(), ps)
					if err != nil {
						t.Fatalf("EnqueueMany: %v", err)
					}
					for _, r := range res {
						want[r.Job.Key] = append(want[r.Job.Key], r.Job.ID)
					}
					ps = ps[:0]
				}
				for i := range tt.keys * tt.perKey {
					ps = append(ps, herald.EnqueueParams{Kind: "k", Key: fmt.Sprintf("key-%d", i%tt.keys)})
					if len(ps) == tt.batch {
						flush()
					}
				}
				if len(ps) > 0 {
					flush()
				}
			}
			total := tt.keys * tt.perKey
			waitFor(t, 20*time.Second, "all jobs to run", func() bool { return tr.starts() >= total })
			stopClient(t, c)

			if ov := tr.overlaps(); len(ov) > 0 {
				t.Errorf("jobs of one key overlapped on keys %v", ov)
			}
			got := map[string][]int64{}
			keyOf := map[int64]string{}
			for key, ids := range want {
				for _, id := range ids {
					keyOf[id] = key
				}
			}
			for _, id := range tr.startOrder() {
				got[keyOf[id]] = append(got[keyOf[id]], id)
			}
			for key, ids := range want {
				if !slices.Equal(got[key], ids) {
					t.Errorf("key %s started %v, want enqueue order %v", key, got[key], ids)
				}
			}
			if n := tr.starts(); n != total {
				t.Errorf("%d attempts started, want %d (each job once)", n, total)
			}
		})
	}
}

// A key's jobs start in the order they became due, not the order they were
// enqueued. A fake clock makes the due times exact.
func TestPerKeyDueOrder(t *testing.T) {
	t.Parallel()

	type job struct {
		name  string
		delay time.Duration // Delay; negative means RunAt in the past by that much
		runAt time.Duration // RunAt offset from the fake start when set
	}
	tests := []struct {
		name string
		jobs []job
		want []string
	}{
		{"DelayedGoesBehind", []job{{name: "late", delay: 2 * time.Second}, {name: "now"}}, []string{"now", "late"}},
		{"RunAtAndDelayInterleave", []job{
			{name: "d3", delay: 3 * time.Second},
			{name: "r1", runAt: time.Second},
			{name: "d2", delay: 2 * time.Second},
			{name: "now"},
		}, []string{"now", "r1", "d2", "d3"}},
		{"PastRunAtIsDueNow", []job{{name: "a"}, {name: "past", runAt: -time.Hour}, {name: "b"}}, []string{"a", "past", "b"}},
		{"SameDueKeepsEnqueueOrder", []job{{name: "x", delay: time.Second}, {name: "y", runAt: time.Second}, {name: "z", delay: time.Second}}, []string{"x", "y", "z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := clock.NewFake(fakeStart)
			cfg := testConfig(t)
			cfg.Clock = clk
			cfg.LeaseDuration = time.Hour // the fake clock jumps; leases must not expire
			c := newClient(t, cfg)
			var mu sync.Mutex
			var got []string
			mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
				mu.Lock()
				got = append(got, string(j.Payload[1:len(j.Payload)-1]))
				mu.Unlock()
				return nil
			}, herald.KindConfig{})
			// Enqueue everything before the engine can run anything, so
			// only due times decide.
			mustStart(t, c)
			if err := c.Pause("k"); err != nil {
				t.Fatal(err)
			}
			for _, j := range tt.jobs {
				p := herald.EnqueueParams{Kind: "k", Key: "acct", Payload: j.name, Delay: j.delay}
				if j.runAt != 0 {
					p.RunAt = fakeStart.Add(j.runAt)
				}
				mustEnqueue(t, c, p)
			}
			if err := c.Resume("k"); err != nil {
				t.Fatal(err)
			}
			advanceUntil(t, clk, 100*time.Millisecond, "all jobs to run", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) == len(tt.jobs)
			})
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(got, tt.want) {
				t.Errorf("ran %v, want %v", got, tt.want)
			}
		})
	}
}

// A scheduled job does not start before its time.
func TestScheduledNotEarly(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(fakeStart)
	cfg := testConfig(t)
	cfg.Clock = clk
	cfg.LeaseDuration = time.Hour
	c := newClient(t, cfg)
	startedAt := make(chan time.Time, 2)
	mustRegister(t, c, "k", func(context.Context, *herald.Job) error { startedAt <- clk.Now(); return nil }, herald.KindConfig{})
	mustStart(t, c)
	j1 := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Delay: 10 * time.Second})
	j2 := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "a", RunAt: fakeStart.Add(20 * time.Second)})
	if j1.State != herald.StateScheduled || !j1.RunAt.Equal(fakeStart.Add(10*time.Second)) {
		t.Errorf("delayed job = %s at %s, want scheduled at +10s", j1.State, j1.RunAt)
	}
	clk.Advance(9 * time.Second)
	time.Sleep(100 * time.Millisecond)
	select {
	case at := <-startedAt:
		t.Fatalf("a job started at %s, before its run time", at)
	default:
	}
	for _, want := range []time.Time{fakeStart.Add(10 * time.Second), fakeStart.Add(20 * time.Second)} {
		var at time.Time
		advanceUntil(t, clk, 250*time.Millisecond, "the job to start", func() bool {
			select {
			case at = <-startedAt:
				return true
			default:
				return false
			}
		})
		if at.Before(want) {
			t.Errorf("job started at %s, before its run time %s", at, want)
		}
	}
	waitState(t, c, j2.ID, herald.StateCompleted)
}

// Heads of different keys run at the same time: 50 keys with one job each
// all block on a barrier that opens only once all 50 run.
func TestParallelAcrossKeys(t *testing.T) {
	t.Parallel()
	const keys = 50
	cfg := testConfig(t)
	cfg.Workers = 64
	c := newClient(t, cfg)
	var arrived atomic.Int64
	all := make(chan struct{})
	mustRegister(t, c, "k", func(ctx context.Context, j *herald.Job) error {
		if arrived.Add(1) == keys {
			close(all)
		}
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, herald.KindConfig{})
	mustStart(t, c)
	ps := make([]herald.EnqueueParams, keys)
	for i := range ps {
		ps[i] = herald.EnqueueParams{Kind: "k", Key: fmt.Sprintf("acct-%d", i)}
	}
	if _, err := c.EnqueueMany(t.Context(), ps); err != nil {
		t.Fatal(err)
	}
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d keys' heads were running at once", arrived.Load(), keys)
	}
}

// Never more jobs run than the kind's Concurrency or the global Workers
// cap, and the cap is reached when there is enough work.
func TestConcurrencyCaps(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		workers int
		kinds   map[string]int // kind -> Concurrency
		jobs    int            // per kind, each on its own key
		maxPeak map[string]int // per kind; "" is all kinds together
		reach   []string       // entries of maxPeak that must be reached
	}{
		{"KindCap", 10, map[string]int{"a": 3}, 20, map[string]int{"a": 3, "": 3}, []string{"a"}},
		{"GlobalCap", 4, map[string]int{"a": 0}, 20, map[string]int{"a": 4, "": 4}, []string{"a"}},
		{"KindCapAboveGlobal", 2, map[string]int{"a": 5}, 10, map[string]int{"a": 2, "": 2}, []string{"a"}},
		{"TwoKindsShareGlobal", 5, map[string]int{"a": 3, "b": 3}, 15, map[string]int{"a": 3, "b": 3, "": 5}, []string{""}},
		{"TwoKindsUnderGlobal", 20, map[string]int{"a": 2, "b": 4}, 15, map[string]int{"a": 2, "b": 4, "": 6}, []string{"a", "b", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			cfg.Workers = tt.workers
			c := newClient(t, cfg)
			var mu sync.Mutex
			running, peak := map[string]int{}, map[string]int{}
			// Handlers hold their slot until every cap in reach has been
			// reached (or a second passed), so on a loaded machine the
			// caps are reached however slowly the engine hands jobs out.
			reached := make(chan struct{})
			reachedAll := func() bool {
				for _, kind := range tt.reach {
					if peak[kind] < tt.maxPeak[kind] {
						return false
					}
				}
				return true
			}
			for kind, conc := range tt.kinds {
				mustRegister(t, c, kind, func(ctx context.Context, j *herald.Job) error {
					mu.Lock()
					running[kind]++
					running[""]++
					peak[kind] = max(peak[kind], running[kind])
					peak[""] = max(peak[""], running[""])
					select {
					case <-reached:
					default:
						if reachedAll() {
							close(reached)
						}
					}
					mu.Unlock()
					select {
					case <-reached:
					case <-time.After(time.Second):
					}
					time.Sleep(2 * time.Millisecond)
					mu.Lock()
					running[kind]--
					running[""]--
					mu.Unlock()
					return nil
				}, herald.KindConfig{Concurrency: conc})
			}
			mustStart(t, c)
			var ids []int64
			var ps []herald.EnqueueParams
			for kind := range tt.kinds {
				for i := range tt.jobs {
					ps = append(ps, herald.EnqueueParams{Kind: kind, Key: fmt.Sprintf("%s-%d", kind, i)})
				}
			}
			res, err := c.EnqueueMany(t.Context(), ps)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				ids = append(ids, r.Job.ID)
			}
			for _, id := range ids {
				waitState(t, c, id, herald.StateCompleted)
			}
			mu.Lock()
			defer mu.Unlock()
			for kind, limit := range tt.maxPeak {
				if peak[kind] > limit {
					t.Errorf("peak running for %q = %d, above the cap %d", kind, peak[kind], limit)
				}
			}
			for _, kind := range tt.reach {
				if peak[kind] != tt.maxPeak[kind] {
					t.Errorf("peak running for %q = %d, want the cap %d to be reached", kind, peak[kind], tt.maxPeak[kind])
				}
			}
		})
	}
}

// Jobs without a key are unordered: they run in parallel.
func TestUnorderedJobsRunInParallel(t *testing.T) {
	t.Parallel()
	const n = 10
	cfg := testConfig(t)
	c := newClient(t, cfg)
	var arrived atomic.Int64
	all := make(chan struct{})
	mustRegister(t, c, "k", func(ctx context.Context, j *herald.Job) error {
		if arrived.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, herald.KindConfig{})
	mustStart(t, c)
	for range n {
		mustEnqueue(t, c, herald.EnqueueParams{Kind: "k"})
	}
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d unordered jobs ran at once", arrived.Load(), n)
	}
}

// Kinds do not split a key's line: jobs of different kinds that share a key
// still run one at a time, in order, each exactly once.
//
// BUG (store/sqlite): this fails. After a head finishes, the next job of its
// line is handed off without rewriting the line row, which keeps naming the
// finished head and its kind; claims of that kind exclude only the lines
// running a job of the same kind, so the finished head is claimed and run
// again, concurrently with its successor.
func TestPerKeyFIFOMixedKinds(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	tr := newTracker()
	h := func(ctx context.Context, j *herald.Job) error {
		end := tr.begin(j)
		defer end()
		time.Sleep(20 * time.Millisecond)
		return nil
	}
	kinds := []string{"email", "webhook", "sms"}
	for _, k := range kinds {
		mustRegister(t, c, k, h, herald.KindConfig{})
	}
	mustStart(t, c)
	var want []int64
	for i := range 9 {
		want = append(want, mustEnqueue(t, c, herald.EnqueueParams{Kind: kinds[i%len(kinds)], Key: "acct"}).ID)
	}
	waitState(t, c, want[len(want)-1], herald.StateCompleted)
	stopClient(t, c)
	if ov := tr.overlaps(); len(ov) > 0 {
		t.Errorf("%d overlapping starts on key acct", len(ov))
	}
	if got := tr.startOrder(); !slices.Equal(got, want) {
		t.Errorf("started %v, want each job once in enqueue order %v", got, want)
	}
}

// Across keys, the head that has waited longest starts first: a busy key
// keeps its earlier jobs' turn but cannot starve a key that came later.
func TestOldestHeadFirstAcrossKeys(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Workers = 1
	c := newClient(t, cfg)
	tr := newTracker()
	gate := make(chan struct{})
	mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
		defer tr.begin(j)()
		if string(j.Payload) == `"first"` {
			<-gate
		}
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)
	batch := func(key string, n int, payload string) []int64 {
		ps := make([]herald.EnqueueParams, n)
		for i := range ps {
			ps[i] = herald.EnqueueParams{Kind: "k", Key: key, Payload: payload}
		}
		res, err := c.EnqueueMany(t.Context(), ps)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, r := range res {
			ids = append(ids, r.Job.ID)
		}
		return ids
	}
	first := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "hot", Payload: "first"}).ID
	waitState(t, c, first, herald.StateRunning)
	early := batch("hot", 10, "early")
	time.Sleep(2 * time.Millisecond)
	other := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "cold", Payload: "other"}).ID
	time.Sleep(2 * time.Millisecond)
	late := batch("hot", 10, "late")
	close(gate)
	waitState(t, c, late[len(late)-1], herald.StateCompleted)
	waitState(t, c, other, herald.StateCompleted)

	want := append(append(append([]int64{first}, early...), other), late...)
	if got := tr.startOrder(); !slices.Equal(got, want) {
		t.Errorf("start order %v, want %v (oldest waiting head first)", got, want)
	}
}
