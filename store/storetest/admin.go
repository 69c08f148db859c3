package storetest

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

func exerciseRetry(t *testing.T, setup func(t *testing.T) *bundle) {
	// A retried job joins its line at the back: even when "now" equals the
	// due time of the job running on that line and the retried job's id is
	// smaller, it must not be placed ahead of it (the line only walks on).
	t.Run("RejoinNeverAheadOfRunningHead", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		dead := b.insertOne(base, params(kindEmail, "k"))
		b.discard(base, b.claimOne(base), false)
		t1, t2 := at(time.Second), at(2*time.Second)
		first := b.insertOne(t1, params(kindEmail, "k"))
		second := b.insertOne(t2, params(kindEmail, "k"))
		claimed := b.claimOne(t2)
		if claimed.ID != first.ID {
			t.Fatalf("claimed %d, want %d", claimed.ID, first.ID)
		}
		// Finish the head and claim in one exchange, as the engine does (a
		// driver may hand the successor over without rewriting its line).
		claim := &store.ClaimParams{Now: t2, Owner: owner1, LeaseUntil: t2.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 10}}, Max: 10}
		res, err := b.d.Exchange(t.Context(), store.ExchangeParams{Now: t2, Claim: claim,
			Finishes: []store.FinishParams{{ID: first.ID, Owner: owner1, Outcome: store.OutcomeCompleted}}})
		if err != nil {
			t.Fatalf("Exchange: %v", err)
		}
		wantJobs(t, "claimed after the head finished", res.Claimed, second)
		// "now" equals the running job's due time and the retried job's id
		// is smaller: it must still go behind the running job.
		if _, err := b.d.Retry(t.Context(), dead.ID, t2); err != nil {
			t.Fatalf("Retry: %v", err)
		}
		b.complete(t2, res.Claimed[0])
		if got := b.claimOne(t2); got.ID != dead.ID {
			t.Fatalf("after the running job finished, claimed %d; want the retried job %d", got.ID, dead.ID)
		}
	})
	retry := func(b *bundle, id int64, now time.Time) *store.Job {
		b.t.Helper()
		j, err := b.d.Retry(b.t.Context(), id, now)
		if err != nil {
			b.t.Fatalf("Retry(%d): %v", id, err)
		}
		if j == nil || j.ID != id {
			b.t.Fatalf("Retry(%d) returned %+v", id, j)
		}
		return j
	}
	// wantFresh checks a retried job from Retry and from Get.
	wantFresh := func(b *bundle, j *store.Job, now time.Time, head bool) {
		b.t.Helper()
		for _, got := range []*store.Job{j, b.get(j.ID)} {
			wantState(b.t, got, store.StateAvailable)
			wantHead(b.t, got, head)
			if got.Attempt != 0 {
				b.t.Errorf("retried job %d: Attempt %d, want 0", got.ID, got.Attempt)
			}
			if got.RunAt.After(now) {
				b.t.Errorf("retried job %d: RunAt %v after now %v", got.ID, got.RunAt, now)
			}
			if !got.FinishedAt.IsZero() {
				b.t.Errorf("retried job %d: FinishedAt %v, want zero (it is pending again)", got.ID, got.FinishedAt)
			}
		}
	}

	t.Run("BlockingDeadLetter", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		b.discard(at(time.Second), b.claimOne(base), true)
		now := at(time.Minute)
		wantFresh(b, retry(b, jobs[0].ID, now), now, true)
		wantHead(t, b.get(jobs[1].ID), false)
		again := b.claimOne(now)
		if again.ID != jobs[0].ID || again.Attempt != 1 {
			t.Fatalf("claimed job %d attempt %d, want the retried dead letter %d at attempt 1", again.ID, again.Attempt, jobs[0].ID)
		}
		b.complete(now, again)
		if next := b.claimOne(now); next.ID != jobs[1].ID {
			t.Fatalf("claimed job %d, want %d", next.ID, jobs[1].ID)
		}
	})

	t.Run("NonHeadDiscardedRejoinsAtBack", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"), params(kindEmail, "k"))
		b.discard(at(time.Second), b.claimOne(base), false)
		now := at(time.Minute)
		wantFresh(b, retry(b, jobs[0].ID, now), now, false)
		wantHead(t, b.get(jobs[1].ID), true)
		for _, want := range []*store.Job{jobs[1], jobs[2], jobs[0]} {
			got := b.claimOne(now)
			if got.ID != want.ID {
				t.Fatalf("claimed job %d, want %d (line order %v)", got.ID, want.ID, []int64{jobs[1].ID, jobs[2].ID, jobs[0].ID})
			}
			b.complete(now, got)
		}
	})

	t.Run("DiscardedWithNoLineLeft", func(t *testing.T) {
		t.Parallel()
		for name, key := range map[string]string{"Ordered": "k", "Unordered": ""} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				j := b.insertOne(base, params(kindEmail, key))
				b.discard(at(time.Second), b.claimOne(base), false)
				now := at(time.Minute)
				wantFresh(b, retry(b, j.ID, now), now, true)
				if got := b.claimOne(now); got.ID != j.ID {
					t.Fatalf("claimed job %d, want %d", got.ID, j.ID)
				}
			})
		}
	})

	t.Run("Cancelled", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		if _, err := b.d.Cancel(t.Context(), jobs[1].ID, at(time.Second)); err != nil {
			t.Fatalf("Cancel: %v", err)
		}
		now := at(time.Minute)
		wantFresh(b, retry(b, jobs[1].ID, now), now, false)
		first := b.claimOne(now)
		if first.ID != jobs[0].ID {
			t.Fatalf("claimed job %d, want the head %d", first.ID, jobs[0].ID)
		}
		b.complete(now, first)
		if got := b.claimOne(now); got.ID != jobs[1].ID {
			t.Fatalf("claimed job %d, want the retried job %d", got.ID, jobs[1].ID)
		}
	})

	t.Run("RetryableHeadRunsNow", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		b.retry(at(time.Second), b.claimOne(base), at(time.Hour), "boom")
		now := at(time.Minute)
		got := retry(b, jobs[0].ID, now)
		if got.Attempt != 0 || got.RunAt.After(now) || !got.Head {
			t.Errorf("retried job: Attempt %d RunAt %v Head %v, want 0, <= %v, true", got.Attempt, got.RunAt, got.Head, now)
		}
		again := b.claimOne(now)
		if again.ID != jobs[0].ID || again.Attempt != 1 {
			t.Fatalf("claimed job %d attempt %d, want %d attempt 1", again.ID, again.Attempt, jobs[0].ID)
		}
	})

	t.Run("Errors", func(t *testing.T) {
		t.Parallel()
		tests := []refusalCase{
			{"Running", func(b *bundle) int64 {
				b.insertOne(base, params(kindEmail, "k"))
				return b.claimOne(base).ID
			}, store.ErrWrongState},
			{"Completed", func(b *bundle) int64 {
				b.insertOne(base, params(kindEmail, "k"))
				j := b.claimOne(base)
				b.complete(at(time.Second), j)
				return j.ID
			}, store.ErrWrongState},
			{"Missing", func(b *bundle) int64 {
				return b.insertOne(base, params(kindEmail, "k")).ID + 100
			}, store.ErrNotFound},
		}
		exerciseRefusals(t, setup, "Retry", func(b *bundle, id int64) error {
			_, err := b.d.Retry(b.t.Context(), id, at(time.Minute))
			return err
		}, tests)
	})
}

func exerciseCancel(t *testing.T, setup func(t *testing.T) *bundle) {
	cancel := func(b *bundle, id int64, now time.Time) *store.Job {
		b.t.Helper()
		j, err := b.d.Cancel(b.t.Context(), id, now)
		if err != nil {
			b.t.Fatalf("Cancel(%d): %v", id, err)
		}
		if j == nil || j.ID != id {
			b.t.Fatalf("Cancel(%d) returned %+v", id, j)
		}
		wantState(b.t, j, store.StateCancelled)
		wantHead(b.t, j, false)
		wantTime(b.t, "FinishedAt", j.FinishedAt, now)
		got := b.get(id)
		wantState(b.t, got, store.StateCancelled)
		wantHead(b.t, got, false)
		return j
	}

	t.Run("PendingHeadPromotesNext", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		cancel(b, jobs[0].ID, at(time.Second))
		wantHead(t, b.get(jobs[1].ID), true)
		if got := b.claimOne(at(time.Second)); got.ID != jobs[1].ID {
			t.Fatalf("claimed job %d, want %d", got.ID, jobs[1].ID)
		}
	})

	t.Run("ScheduledHeadPromotesNext", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, scheduled(kindEmail, "k", at(time.Hour)), scheduled(kindEmail, "k", at(2*time.Hour)))
		cancel(b, jobs[0].ID, at(time.Second))
		b.claimNone(at(90 * time.Minute))
		if got := b.claimOne(at(2 * time.Hour)); got.ID != jobs[1].ID {
			t.Fatalf("claimed job %d, want %d", got.ID, jobs[1].ID)
		}
	})

	t.Run("RetryableHeadPromotesNext", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		b.retry(at(time.Second), b.claimOne(base), at(time.Hour), "boom")
		cancel(b, jobs[0].ID, at(time.Minute))
		if got := b.claimOne(at(time.Minute)); got.ID != jobs[1].ID {
			t.Fatalf("claimed job %d, want %d", got.ID, jobs[1].ID)
		}
	})

	t.Run("WaitingJobLeavesHeadAlone", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"), params(kindEmail, "k"))
		cancel(b, jobs[1].ID, at(time.Second))
		wantHead(t, b.get(jobs[0].ID), true)
		wantHead(t, b.get(jobs[2].ID), false)
		first := b.claimOne(at(time.Second))
		if first.ID != jobs[0].ID {
			t.Fatalf("claimed job %d, want %d", first.ID, jobs[0].ID)
		}
		b.complete(at(time.Second), first)
		if got := b.claimOne(at(time.Second)); got.ID != jobs[2].ID {
			t.Fatalf("claimed job %d, want %d (the cancelled one is skipped)", got.ID, jobs[2].ID)
		}
	})

	t.Run("Unordered", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		j := b.insertOne(base, scheduled(kindEmail, "", at(time.Hour)))
		cancel(b, j.ID, at(time.Second))
		b.claimNone(at(2 * time.Hour))
	})

	t.Run("BlockingDeadLetterUnblocksKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		b.discard(at(time.Second), b.claimOne(base), true)
		b.claimNone(at(time.Minute))
		cancel(b, jobs[0].ID, at(time.Minute))
		if got := b.claimOne(at(time.Minute)); got.ID != jobs[1].ID {
			t.Fatalf("claimed job %d, want %d", got.ID, jobs[1].ID)
		}
	})

	// Cancel applies only to a job that is not running: when a claim and a
	// cancel of the same head race, exactly one of them may win.
	t.Run("RacesClaim", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		rounds := 50 // each round is a few commits; the race shows within tens
		if testing.Short() {
			rounds = 10
		}
		for i := range rounds {
			now := at(time.Duration(i) * time.Second)
			jobs := b.insert(now, params(kindEmail, "k"), params(kindEmail, "k"))
			var (
				claimed   []*store.Job
				claimErr  error
				cancelErr error
				wg        sync.WaitGroup
			)
			start := make(chan struct{})
			wg.Go(func() {
				<-start
				claimed, claimErr = b.d.Claim(t.Context(), store.ClaimParams{Now: now, Owner: owner1, LeaseUntil: now.Add(time.Minute),
					Limits: []store.KindLimit{{Kind: kindEmail, Max: 10}}, Max: 10})
			})
			wg.Go(func() {
				<-start
				_, cancelErr = b.d.Cancel(t.Context(), jobs[0].ID, now)
			})
			close(start)
			wg.Wait()
			if claimErr != nil {
				t.Fatalf("round %d: Claim: %v", i, claimErr)
			}
			won := slices.ContainsFunc(claimed, func(j *store.Job) bool { return j.ID == jobs[0].ID })
			if won && cancelErr == nil {
				t.Fatalf("round %d: job %d was both claimed and cancelled (now %s, claim result %v)",
					i, jobs[0].ID, b.get(jobs[0].ID).State, ids(claimed))
			}
			if !won && cancelErr != nil {
				t.Fatalf("round %d: Cancel of an unclaimed head failed: %v", i, cancelErr)
			}
			if won && !errors.Is(cancelErr, store.ErrWrongState) {
				t.Fatalf("round %d: Cancel of a running job: %v, want ErrWrongState", i, cancelErr)
			}
			// Drain the key so the next round starts with an empty line.
			for _, j := range claimed {
				b.complete(now, j)
			}
			for {
				rest := b.claimWith(store.ClaimParams{Now: now, Owner: owner1, LeaseUntil: now.Add(time.Minute),
					Limits: []store.KindLimit{{Kind: kindEmail, Max: 10}}, Max: 10})
				if len(rest) == 0 {
					break
				}
				b.complete(now, rest...)
			}
		}
	})

	t.Run("Errors", func(t *testing.T) {
		t.Parallel()
		tests := []refusalCase{
			{"Running", func(b *bundle) int64 {
				b.insertOne(base, params(kindEmail, "k"))
				return b.claimOne(base).ID
			}, store.ErrWrongState},
			{"Completed", func(b *bundle) int64 {
				b.insertOne(base, params(kindEmail, "k"))
				j := b.claimOne(base)
				b.complete(at(time.Second), j)
				return j.ID
			}, store.ErrWrongState},
			{"DiscardedNotBlocking", func(b *bundle) int64 {
				b.insertOne(base, params(kindEmail, "k"))
				j := b.claimOne(base)
				b.discard(at(time.Second), j, false)
				return j.ID
			}, store.ErrWrongState},
			{"AlreadyCancelled", func(b *bundle) int64 {
				j := b.insertOne(base, params(kindEmail, "k"))
				if _, err := b.d.Cancel(b.t.Context(), j.ID, at(time.Second)); err != nil {
					b.t.Fatalf("first Cancel: %v", err)
				}
				return j.ID
			}, store.ErrWrongState},
			{"Missing", func(b *bundle) int64 {
				return b.insertOne(base, params(kindEmail, "k")).ID + 100
			}, store.ErrNotFound},
		}
		exerciseRefusals(t, setup, "Cancel", func(b *bundle, id int64) error {
			_, err := b.d.Cancel(b.t.Context(), id, at(time.Minute))
			return err
		}, tests)
	})
}

func exercisePrune(t *testing.T, setup func(t *testing.T) *bundle) {
	prune := func(b *bundle, p store.PruneParams) int {
		b.t.Helper()
		n, err := b.d.Prune(b.t.Context(), p)
		if err != nil {
			b.t.Fatalf("Prune(%+v): %v", p, err)
		}
		return n
	}
	exists := func(b *bundle, id int64) bool {
		b.t.Helper()
		_, err := b.d.Get(b.t.Context(), id)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			b.t.Fatalf("Get(%d): %v", id, err)
		}
		return err == nil
	}

	// retention builds one job in each situation Prune must tell apart.
	type retention struct {
		completedEarly, completedLate, cancelledEarly       *store.Job
		discardedEarly, discardedLate, blocking, behindDead *store.Job
		pending, scheduledJob, running                      *store.Job
	}
	build := func(b *bundle) retention {
		b.t.Helper()
		var r retention
		jobs := b.insert(base,
			params(kindEmail, ""),                   // 0 completed at +1m
			params(kindEmail, ""),                   // 1 completed at +10m
			params(kindWebhook, ""),                 // 2 cancelled at +1m
			params(kindEmail, "d1"),                 // 3 discarded at +1m
			params(kindEmail, "d2"),                 // 4 discarded at +10m
			params(kindEmail, "blk"),                // 5 blocking dead letter since +1m
			params(kindEmail, "blk"),                // 6 waiting behind it
			params(kindWebhook, ""),                 // 7 pending
			scheduled(kindEmail, "", at(time.Hour)), // 8 scheduled
			params(kindEmail, "run"),                // 9 running
		)
		r.completedEarly, r.completedLate, r.cancelledEarly = jobs[0], jobs[1], jobs[2]
		r.discardedEarly, r.discardedLate, r.blocking, r.behindDead = jobs[3], jobs[4], jobs[5], jobs[6]
		r.pending, r.scheduledJob, r.running = jobs[7], jobs[8], jobs[9]
		claimed := b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(time.Hour),
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 100}}, Max: 100})
		wantJobs(b.t, "setup claim", claimed, jobs[0], jobs[1], jobs[3], jobs[4], jobs[5], jobs[9])
		b.finish(at(time.Minute),
			store.FinishParams{ID: jobs[0].ID, Owner: owner1, Outcome: store.OutcomeCompleted},
			store.FinishParams{ID: jobs[3].ID, Owner: owner1, Outcome: store.OutcomeDiscard, Error: "e"},
			store.FinishParams{ID: jobs[5].ID, Owner: owner1, Outcome: store.OutcomeDiscard, Error: "e", BlockKey: true},
		)
		if _, err := b.d.Cancel(b.t.Context(), jobs[2].ID, at(time.Minute)); err != nil {
			b.t.Fatalf("Cancel: %v", err)
		}
		b.finish(at(10*time.Minute),
			store.FinishParams{ID: jobs[1].ID, Owner: owner1, Outcome: store.OutcomeCompleted},
			store.FinishParams{ID: jobs[4].ID, Owner: owner1, Outcome: store.OutcomeDiscard, Error: "e"},
		)
		return r
	}

	tests := []struct {
		name    string
		p       store.PruneParams
		deleted func(r retention) []*store.Job
	}{
		{"BothRetentions", store.PruneParams{CompletedBefore: at(5 * time.Minute), DiscardedBefore: at(5 * time.Minute)},
			func(r retention) []*store.Job {
				return []*store.Job{r.completedEarly, r.cancelledEarly, r.discardedEarly}
			}},
		{"CompletedOnly", store.PruneParams{CompletedBefore: at(time.Hour)},
			func(r retention) []*store.Job {
				return []*store.Job{r.completedEarly, r.completedLate, r.cancelledEarly}
			}},
		{"DiscardedOnly", store.PruneParams{DiscardedBefore: at(time.Hour)},
			func(r retention) []*store.Job { return []*store.Job{r.discardedEarly, r.discardedLate} }},
		{"BeforeIsStrict", store.PruneParams{CompletedBefore: at(time.Minute), DiscardedBefore: at(time.Minute)},
			func(r retention) []*store.Job { return nil }},
		{"Everything", store.PruneParams{CompletedBefore: at(1000 * time.Hour), DiscardedBefore: at(1000 * time.Hour)},
			func(r retention) []*store.Job {
				return []*store.Job{r.completedEarly, r.completedLate, r.cancelledEarly, r.discardedEarly, r.discardedLate}
			}},
	}
	t.Run("Retention", func(t *testing.T) {
		t.Parallel()
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				r := build(b)
				p := tt.p
				p.Limit = 1000
				deleted := tt.deleted(r)
				if n := prune(b, p); n != len(deleted) {
					t.Errorf("Prune returned %d, want %d", n, len(deleted))
				}
				gone := map[int64]bool{}
				for _, j := range deleted {
					gone[j.ID] = true
				}
				all := []*store.Job{r.completedEarly, r.completedLate, r.cancelledEarly, r.discardedEarly, r.discardedLate,
					r.blocking, r.behindDead, r.pending, r.scheduledJob, r.running}
				for _, j := range all {
					if got := exists(b, j.ID); got == gone[j.ID] {
						t.Errorf("job %d (key %q): exists = %v, want %v", j.ID, j.Key, got, !gone[j.ID])
					}
				}
				if n := prune(b, p); n != 0 {
					t.Errorf("second Prune returned %d, want 0", n)
				}
				// The blocked key is still blocked: its dead letter was kept.
				wantHead(t, b.get(r.blocking.ID), true)
				if got := b.claimWith(store.ClaimParams{Now: at(2 * time.Minute), Owner: owner2, LeaseUntil: at(time.Hour),
					Limits: []store.KindLimit{{Kind: kindEmail, Max: 100}}, Max: 100}); len(got) != 0 {
					t.Errorf("claimed %v after Prune, want nothing (the blocked key must stay blocked)", ids(got))
				}
			})
		}
	})

	// Limit keeps each call's transaction short: no call deletes more.
	limitTests := []struct {
		name                 string
		completed, discarded int
		limit                int
	}{
		{"Completed", 5, 0, 2},
		{"Discarded", 0, 5, 2},
		{"Mixed", 3, 3, 2},
	}
	t.Run("Limit", func(t *testing.T) {
		t.Parallel()
		for _, tt := range limitTests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				var ps []store.InsertParams
				for range tt.completed + tt.discarded {
					ps = append(ps, params(kindEmail, ""))
				}
				b.insert(base, ps...)
				claimed := b.claim(base, 100)
				var fs []store.FinishParams
				for i, j := range claimed {
					outcome := store.OutcomeCompleted
					if i >= tt.completed {
						outcome = store.OutcomeDiscard
					}
					fs = append(fs, store.FinishParams{ID: j.ID, Owner: owner1, Outcome: outcome, Error: "e"})
				}
				b.finish(at(time.Minute), fs...)
				total := tt.completed + tt.discarded
				p := store.PruneParams{CompletedBefore: at(time.Hour), DiscardedBefore: at(time.Hour), Limit: tt.limit}
				deleted := 0
				for calls := 0; deleted < total; calls++ {
					if calls > total {
						t.Fatalf("Prune deleted %d of %d jobs after %d calls", deleted, total, calls)
					}
					n := prune(b, p)
					if n > tt.limit {
						t.Errorf("Prune with Limit %d deleted %d jobs in one call", tt.limit, n)
					}
					if n == 0 {
						t.Fatalf("Prune returned 0 with %d finalized jobs left", total-deleted)
					}
					deleted += n
				}
				if n := b.count(); n != 0 {
					t.Fatalf("%d jobs left after pruning everything", n)
				}
			})
		}
	})
}

func exerciseLifecycle(t *testing.T, setup func(t *testing.T) *bundle) {
	t.Run("Ping", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if err := b.d.Ping(t.Context()); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	})
	t.Run("Close", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.insertOne(base, params(kindEmail, "k"))
		if err := b.d.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		// Use after Close fails cleanly rather than panicking or hanging.
		if err := b.d.Ping(t.Context()); err == nil {
			t.Error("Ping after Close succeeded")
		}
		if _, err := b.d.InsertMany(t.Context(), store.InsertManyParams{Now: base, Jobs: []store.InsertParams{params(kindEmail, "k")}}); err == nil {
			t.Error("InsertMany after Close succeeded")
		}
		_ = b.d.Close() // a second Close (as cleanup may do) must not panic
	})
}

// refusalCase prepares a job on which an operation must fail with want.
type refusalCase struct {
	name    string
	prepare func(b *bundle) int64
	want    error
}

// exerciseRefusals runs op on each case's job: it must fail with the case's
// error and leave the job as it was (state, attempts, finish time).
func exerciseRefusals(t *testing.T, setup func(t *testing.T) *bundle, opName string,
	op func(b *bundle, id int64) error, tests []refusalCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			id := tt.prepare(b)
			var before *store.Job
			if !errors.Is(tt.want, store.ErrNotFound) {
				before = b.get(id)
			}
			if err := op(b, id); !errors.Is(err, tt.want) {
				t.Fatalf("%s(%d) error = %v, want %v", opName, id, err, tt.want)
			}
			if before == nil {
				return
			}
			after := b.get(id)
			if after.State != before.State || after.Attempt != before.Attempt || !after.FinishedAt.Equal(before.FinishedAt) {
				t.Fatalf("failed %s changed the job: %s/%d/%v -> %s/%d/%v", opName,
					before.State, before.Attempt, before.FinishedAt, after.State, after.Attempt, after.FinishedAt)
			}
		})
	}
}
