package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

func exerciseInsertMany(t *testing.T, setup func(t *testing.T) *bundle) {
	t.Run("IDsIncrease", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		first := b.insert(base, params(kindEmail, "a"), params(kindEmail, "b"), params(kindWebhook, ""),
			params(kindEmail, "a"), params(kindWebhook, "c"))
		second := b.insert(at(time.Second), params(kindEmail, "a"), params(kindEmail, ""), params(kindWebhook, "d"))
		all := slices.Concat(first, second)
		for i := 1; i < len(all); i++ {
			if all[i].ID <= all[i-1].ID {
				t.Fatalf("ids not increasing: %v", ids(all))
			}
		}
	})

	// A large batch may have its ids ordered across keys as the driver
	// writes them (SQLite groups a large cycle's rows by key), but each
	// key's ids rise in the order given, every id is new, and a later
	// batch's ids are all above an earlier one's.
	t.Run("LargeBatchIDs", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		batch := func(now time.Time) []store.InsertParams {
			var in []store.InsertParams
			for i := range 2500 {
				key := ""
				if i%10 != 0 {
					key = fmt.Sprintf("k%02d", (i*7)%50)
				}
				in = append(in, params(kindEmail, key))
			}
			return in
		}
		first := b.insert(base, batch(base)...)
		second := b.insert(at(time.Second), batch(at(time.Second))...)
		seen := map[int64]bool{}
		for n, jobs := range [][]*store.Job{first, second} {
			last := map[string]int64{}
			for i, j := range jobs {
				if want := batch(base)[i].Key; j.Key != want {
					t.Fatalf("batch %d result %d: key %q, want %q", n, i, j.Key, want)
				}
				if seen[j.ID] {
					t.Fatalf("batch %d result %d: id %d given twice", n, i, j.ID)
				}
				seen[j.ID] = true
				if prev, ok := last[j.Key]; ok && j.ID <= prev {
					t.Fatalf("batch %d key %q: id %d after %d", n, j.Key, j.ID, prev)
				}
				last[j.Key] = j.ID
			}
		}
		if lo, hi := slices.Min(ids(second)), slices.Max(ids(first)); lo <= hi {
			t.Fatalf("second batch's lowest id %d not above the first's highest %d", lo, hi)
		}
	})

	t.Run("FieldsRoundTrip", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		now := at(time.Minute)
		future := now.Add(time.Hour + 123456*time.Microsecond)
		tests := []struct {
			name      string
			in        store.InsertParams
			wantRunAt time.Time
			wantState store.State
		}{
			{
				name: "OrderedDueNow",
				in: store.InsertParams{Kind: kindEmail, Key: "acct-1", Payload: json.RawMessage(`{"to":"a@example.com","n":1,"s":"ü"}`),
					MaxAttempts: 5, IdempotencyKey: "idem-1"},
				wantRunAt: now, wantState: store.StateAvailable,
			},
			{
				name:      "OrderedScheduled",
				in:        store.InsertParams{Kind: kindWebhook, Key: "acct-2", Payload: json.RawMessage(`[3,1,2]`), RunAt: future, MaxAttempts: 1},
				wantRunAt: future, wantState: store.StateScheduled,
			},
			{
				name:      "Unordered",
				in:        store.InsertParams{Kind: kindEmail, Payload: json.RawMessage(`"plain"`), MaxAttempts: 25, IdempotencyKey: "idem-2"},
				wantRunAt: now, wantState: store.StateAvailable,
			},
		}
		in := make([]store.InsertParams, len(tests))
		for i, tt := range tests {
			in[i] = tt.in
		}
		inserted := b.insert(now, in...)
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				b := b.with(t)
				ins := inserted[i]
				wantState(t, ins, tt.wantState)
				wantHead(t, ins, true)
				stored := b.get(ins.ID)
				for _, j := range []struct {
					from string
					job  *store.Job
				}{{"InsertMany", ins}, {"Get", stored}} {
					what := func(field string) string { return fmt.Sprintf("%s: job %d %s", j.from, j.job.ID, field) }
					if j.job.ID != ins.ID {
						t.Errorf("%s = %d, want %d", what("ID"), j.job.ID, ins.ID)
					}
					if j.job.Kind != tt.in.Kind {
						t.Errorf("%s = %q, want %q", what("Kind"), j.job.Kind, tt.in.Kind)
					}
					if j.job.Key != tt.in.Key {
						t.Errorf("%s = %q, want %q", what("Key"), j.job.Key, tt.in.Key)
					}
					if string(j.job.Payload) != string(tt.in.Payload) {
						t.Errorf("%s = %s, want %s (bytes must round-trip unchanged)", what("Payload"), j.job.Payload, tt.in.Payload)
					}
					if j.job.MaxAttempts != tt.in.MaxAttempts {
						t.Errorf("%s = %d, want %d", what("MaxAttempts"), j.job.MaxAttempts, tt.in.MaxAttempts)
					}
					if j.job.IdempotencyKey != tt.in.IdempotencyKey {
						t.Errorf("%s = %q, want %q", what("IdempotencyKey"), j.job.IdempotencyKey, tt.in.IdempotencyKey)
					}
					wantTime(t, what("RunAt"), j.job.RunAt, tt.wantRunAt)
					wantTime(t, what("DueAt"), j.job.DueAt, tt.wantRunAt)
					wantTime(t, what("CreatedAt"), j.job.CreatedAt, now)
					if j.job.Attempt != 0 || len(j.job.Errors) != 0 || !j.job.StartedAt.IsZero() ||
						!j.job.FinishedAt.IsZero() || j.job.LeaseOwner != "" {
						t.Errorf("%s: fresh job has Attempt %d, Errors %v, StartedAt %v, FinishedAt %v, LeaseOwner %q; want all zero",
							what("state"), j.job.Attempt, j.job.Errors, j.job.StartedAt, j.job.FinishedAt, j.job.LeaseOwner)
					}
					if !j.job.Head {
						t.Errorf("%s = false, want true", what("Head"))
					}
				}
				if got := b.stateAt(ins.ID, now); got != tt.wantState {
					t.Errorf("List at insert time: state %q, want %q", got, tt.wantState)
				}
			})
		}
	})

	t.Run("StateFromRunAt", func(t *testing.T) {
		t.Parallel()
		now := at(time.Hour)
		tests := []struct {
			name  string
			runAt time.Time
			want  store.State
		}{
			{"Zero", time.Time{}, store.StateAvailable},
			{"Past", now.Add(-30 * time.Minute), store.StateAvailable},
			{"Now", now, store.StateAvailable},
			{"Future", now.Add(time.Second), store.StateScheduled},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				j := b.insertOne(now, scheduled(kindEmail, "", tt.runAt))
				wantState(t, j, tt.want)
				if got := b.stateAt(j.ID, now); got != tt.want {
					t.Errorf("List at insert time: state %q, want %q", got, tt.want)
				}
				if tt.want == store.StateAvailable && j.RunAt.After(now) {
					t.Errorf("due job has RunAt %v after now %v", j.RunAt, now)
				}
				if tt.want == store.StateScheduled {
					wantTime(t, "RunAt", j.RunAt, tt.runAt)
					if got := b.stateAt(j.ID, tt.runAt); got != store.StateAvailable {
						t.Errorf("List at RunAt: state %q, want available", got)
					}
				}
			})
		}
	})

	t.Run("EmptyBatch", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		res, err := b.d.InsertMany(t.Context(), store.InsertManyParams{Now: base})
		if err != nil {
			t.Fatalf("InsertMany(no jobs): %v", err)
		}
		if len(res) != 0 {
			t.Fatalf("InsertMany(no jobs) returned %d results", len(res))
		}
	})

	t.Run("CancelledContextInsertsNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := b.d.InsertMany(ctx, store.InsertManyParams{Now: base, Jobs: []store.InsertParams{params(kindEmail, "a"), params(kindEmail, "a")}})
		if err == nil {
			t.Fatal("InsertMany with a cancelled context succeeded")
		}
		if n := b.count(); n != 0 {
			t.Fatalf("store holds %d jobs after a failed insert, want 0", n)
		}
	})

	// Readers never see part of a batch: the count a concurrent List
	// observes is always a whole number of batches.
	t.Run("BatchVisibleAsWhole", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		const batches, size = 5, 100
		batch := make([]store.InsertParams, size)
		for i := range batch {
			batch[i] = params(kindEmail, fmt.Sprintf("k%d", i%7))
		}
		done := make(chan struct{})
		var wg sync.WaitGroup
		var insertErr error
		wg.Go(func() {
			defer close(done)
			for i := range batches {
				if _, err := b.d.InsertMany(t.Context(), store.InsertManyParams{Jobs: batch, Now: at(time.Duration(i) * time.Second)}); err != nil {
					insertErr = err
					return
				}
			}
		})
		seen := map[int]bool{}
		for reading := true; reading; {
			select {
			case <-done:
				reading = false
			default:
			}
			jobs, err := b.d.List(t.Context(), store.ListParams{Limit: batches * size * 2, Now: base})
			if err != nil {
				t.Errorf("List: %v", err)
				break
			}
			seen[len(jobs)] = true
			if len(jobs)%size != 0 {
				t.Errorf("List saw %d jobs: part of a batch was visible", len(jobs))
				break
			}
		}
		wg.Wait()
		if insertErr != nil {
			t.Fatalf("InsertMany: %v", insertErr)
		}
		if n := b.count(); n != batches*size {
			t.Fatalf("store holds %d jobs, want %d", n, batches*size)
		}
		t.Logf("distinct counts observed while inserting: %d", len(seen))
	})
}

func exerciseLines(t *testing.T, setup func(t *testing.T) *bundle) {
	// Heads: jobs are inserted in the given batches (each at its own now);
	// afterwards exactly the listed jobs are heads.
	type ins struct {
		key   string
		runAt time.Duration // offset from base; 0 means due now
	}
	tests := []struct {
		name    string
		batches [][]ins // batch i is inserted at base + i seconds
		heads   []int   // indexes into the flattened jobs
	}{
		{"FirstOfKeyOneBatch", [][]ins{{{"k", 0}, {"k", 0}, {"k", 0}}}, []int{0}},
		{"FirstOfKeySeparateBatches", [][]ins{{{"k", 0}}, {{"k", 0}}, {{"k", 0}}}, []int{0}},
		{"KeysIndependent", [][]ins{{{"k1", 0}, {"k2", 0}, {"k1", 0}, {"k3", 0}, {"k2", 0}}}, []int{0, 1, 3}},
		{"UnorderedAlwaysHeads", [][]ins{{{"", 0}, {"", 0}}, {{"", 0}, {"", time.Hour}}}, []int{0, 1, 2, 3}},
		{"DueJobTakesScheduledHead", [][]ins{{{"k", time.Hour}}, {{"k", 0}}}, []int{1}},
		{"DueJobTakesScheduledHeadSameBatch", [][]ins{{{"k", time.Hour}, {"k", 0}}}, []int{1}},
		{"EarlierScheduledTakesLaterScheduledHead", [][]ins{{{"k", 2 * time.Hour}}, {{"k", time.Hour}}, {{"k", 3 * time.Hour}}}, []int{1}},
		{"EqualDueKeepsFirst", [][]ins{{{"k", time.Hour}}, {{"k", time.Hour}}}, []int{0}},
		{"LaterJobNeverTakesDueHead", [][]ins{{{"k", 0}}, {{"k", 0}, {"k", time.Hour}}}, []int{0}},
	}
	t.Run("Heads", func(t *testing.T) {
		t.Parallel()
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				var jobs []*store.Job
				for i, batch := range tt.batches {
					now := at(time.Duration(i) * time.Second)
					ps := make([]store.InsertParams, len(batch))
					for n, in := range batch {
						ps[n] = params(kindEmail, in.key)
						if in.runAt != 0 {
							ps[n].RunAt = base.Add(in.runAt)
						}
					}
					jobs = append(jobs, b.insert(now, ps...)...)
				}
				heads := map[int]bool{}
				for _, h := range tt.heads {
					heads[h] = true
				}
				for i, j := range jobs {
					wantHead(t, b.get(j.ID), heads[i])
				}
			})
		}
	})

	// A job demoted by an earlier-due newcomer runs after it.
	t.Run("DemotedScheduledHeadRunsNext", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		later := b.insertOne(base, scheduled(kindEmail, "k", at(time.Hour)))
		now := b.insertOne(at(time.Second), params(kindEmail, "k"))
		running := b.claimOne(at(time.Second))
		if running.ID != now.ID {
			t.Fatalf("claimed job %d, want the newly due job %d", running.ID, now.ID)
		}
		b.claimNone(at(2 * time.Hour)) // the key's head is running
		b.complete(at(2*time.Hour), running)
		if got := b.claimOne(at(2 * time.Hour)); got.ID != later.ID {
			t.Fatalf("claimed job %d, want the demoted job %d", got.ID, later.ID)
		}
	})

	// Only a scheduled head gives way: one that has started keeps its place
	// even when a newcomer is due before its retry.
	t.Run("StartedHeadKeepsPlace", func(t *testing.T) {
		tests := []struct {
			name    string
			after   func(b *bundle, j *store.Job) // j was claimed at base
			rerunAt time.Time                     // when the head runs again; zero if it waits for an operator or its worker
		}{
			{"Running", func(b *bundle, j *store.Job) {}, time.Time{}},
			{"Retryable", func(b *bundle, j *store.Job) { b.retry(at(time.Second), j, at(time.Hour), "boom") }, at(time.Hour)},
			{"BlockingDeadLetter", func(b *bundle, j *store.Job) { b.discard(at(time.Second), j, true) }, time.Time{}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				b.insertOne(base, params(kindEmail, "k"))
				head := b.claimOne(base)
				tt.after(b, head)
				newcomer := b.insertOne(at(time.Minute), params(kindEmail, "k"))
				wantHead(t, newcomer, false)
				wantHead(t, b.get(newcomer.ID), false)
				wantHead(t, b.get(head.ID), true)
				b.claimNone(at(2 * time.Minute))
				if !tt.rerunAt.IsZero() {
					if got := b.claimOne(tt.rerunAt); got.ID != head.ID {
						t.Fatalf("claimed job %d at %v, want the head %d", got.ID, tt.rerunAt, head.ID)
					}
				}
			})
		}
	})
}

func exerciseIdempotency(t *testing.T, setup func(t *testing.T) *bundle) {
	insertIdem := func(b *bundle, now, since time.Time, ps ...store.InsertParams) []store.InsertResult {
		b.t.Helper()
		res, err := b.d.InsertMany(b.t.Context(), store.InsertManyParams{Jobs: ps, Now: now, IdempotencySince: since})
		if err != nil {
			b.t.Fatalf("InsertMany: %v", err)
		}
		if len(res) != len(ps) {
			b.t.Fatalf("InsertMany returned %d results for %d jobs", len(res), len(ps))
		}
		return res
	}
	withIdem := func(key string, p store.InsertParams) store.InsertParams {
		p.IdempotencyKey = key
		return p
	}

	t.Run("WithinWindowReturnsOriginal", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		orig := insertIdem(b, base, at(-time.Hour), withIdem("order-1", params(kindEmail, "k")))[0]
		if orig.Existing {
			t.Fatal("first insert reported Existing")
		}
		second := params(kindWebhook, "other")
		second.Payload = json.RawMessage(`{"different":true}`)
		tests := []struct {
			name       string
			now, since time.Time
		}{
			{"AMinuteLater", at(time.Minute), at(-time.Hour)},
			{"SinceEqualsCreatedAt", at(time.Minute), base},
		}
		for _, tt := range tests {
			res := insertIdem(b, tt.now, tt.since, withIdem("order-1", second))[0]
			if !res.Existing || res.Job == nil || res.Job.ID != orig.Job.ID {
				t.Errorf("%s: got Existing=%v job %v, want Existing=true job %d", tt.name, res.Existing, res.Job, orig.Job.ID)
				continue
			}
			if res.Job.Kind != kindEmail || res.Job.Key != "k" || string(res.Job.Payload) != "{}" {
				t.Errorf("%s: returned job is not the original: %+v", tt.name, res.Job)
			}
		}
		if n := b.count(); n != 1 {
			t.Fatalf("store holds %d jobs, want 1", n)
		}
	})

	t.Run("ExpiredKeyIsReleased", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		orig := insertIdem(b, base, at(-time.Hour), withIdem("order-1", params(kindEmail, "k")))[0].Job
		now, since := at(2*time.Hour), at(time.Hour)
		fresh := insertIdem(b, now, since, withIdem("order-1", params(kindEmail, "k")))[0]
		if fresh.Existing || fresh.Job.ID == orig.ID {
			t.Fatalf("insert after the window: got Existing=%v job %d, want a new job", fresh.Existing, fresh.Job.ID)
		}
		if fresh.Job.IdempotencyKey != "order-1" {
			t.Errorf("new job's IdempotencyKey = %q, want order-1", fresh.Job.IdempotencyKey)
		}
		b.get(orig.ID) // the old job itself stays
		again := insertIdem(b, now.Add(time.Minute), since, withIdem("order-1", params(kindEmail, "k")))[0]
		if !again.Existing || again.Job.ID != fresh.Job.ID {
			t.Fatalf("insert within the new window: got Existing=%v job %d, want Existing job %d", again.Existing, again.Job.ID, fresh.Job.ID)
		}
		if n := b.count(); n != 2 {
			t.Fatalf("store holds %d jobs, want 2", n)
		}
	})

	t.Run("DuplicatesInBatchResolveToFirst", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		res := insertIdem(b, base, at(-time.Hour),
			withIdem("x", params(kindEmail, "k")),
			withIdem("y", params(kindEmail, "k")),
			withIdem("x", params(kindWebhook, "other")),
			params(kindEmail, "k"),
		)
		if res[0].Existing || res[1].Existing || res[3].Existing {
			t.Errorf("distinct jobs reported Existing: %v %v %v", res[0].Existing, res[1].Existing, res[3].Existing)
		}
		if !res[2].Existing || res[2].Job.ID != res[0].Job.ID {
			t.Fatalf("duplicate in batch: got Existing=%v job %d, want Existing job %d", res[2].Existing, res[2].Job.ID, res[0].Job.ID)
		}
		if n := b.count(); n != 3 {
			t.Fatalf("store holds %d jobs, want 3", n)
		}
	})

	t.Run("PruneReleasesKeys", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		orig := insertIdem(b, base, time.Time{}, withIdem("order-1", params(kindEmail, "")))[0].Job
		if _, err := b.d.Prune(t.Context(), store.PruneParams{IdempotencyBefore: at(time.Hour), Limit: 10}); err != nil {
			t.Fatalf("Prune: %v", err)
		}
		// With no window at all the key still matches while it is held.
		res := insertIdem(b, at(2*time.Hour), time.Time{}, withIdem("order-1", params(kindEmail, "")))[0]
		if res.Existing {
			t.Fatalf("insert after Prune released the key matched job %d", res.Job.ID)
		}
		if res.Job.ID == orig.ID {
			t.Fatalf("new job has the old id %d", orig.ID)
		}
	})

	// The matched job is returned as it is now, not as it was inserted.
	t.Run("ExistingJobShowsCurrentState", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		orig := insertIdem(b, base, time.Time{}, withIdem("order-1", params(kindEmail, "k")))[0].Job
		running := b.claimOne(base)
		match := func(step string, want store.State, attempt int) {
			t.Helper()
			res := insertIdem(b, at(time.Minute), base, withIdem("order-1", params(kindEmail, "k")))[0]
			if !res.Existing || res.Job.ID != orig.ID {
				t.Fatalf("%s: got Existing=%v job %d, want Existing job %d", step, res.Existing, res.Job.ID, orig.ID)
			}
			if res.Job.State != want || res.Job.Attempt != attempt {
				t.Errorf("%s: matched job is %s at attempt %d, want %s at attempt %d", step, res.Job.State, res.Job.Attempt, want, attempt)
			}
		}
		match("while running", store.StateRunning, 1)
		b.complete(at(time.Second), running)
		match("after completion", store.StateCompleted, 1)
	})

	t.Run("KeysDoNotCollideAcrossDistinctValues", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		res := insertIdem(b, base, time.Time{}, withIdem("a", params(kindEmail, "")), withIdem("b", params(kindEmail, "")))
		if res[0].Existing || res[1].Existing || res[0].Job.ID == res[1].Job.ID {
			t.Fatalf("distinct idempotency keys collided: %+v", res)
		}
	})
}
