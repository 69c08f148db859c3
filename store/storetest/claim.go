package storetest

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

func exerciseClaim(t *testing.T, setup func(t *testing.T) *bundle) {
	t.Run("OnlyDueHeads", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base,
			params(kindEmail, ""),                       // 0: unordered, due
			scheduled(kindEmail, "", at(time.Hour)),     // 1: unordered, scheduled
			params(kindEmail, "k"),                      // 2: head, due
			params(kindEmail, "k"),                      // 3: behind 2
			scheduled(kindEmail, "s", at(time.Hour)),    // 4: head, scheduled
			scheduled(kindEmail, "s", at(2*time.Hour)),  // 5: behind 4
			scheduled(kindWebhook, "", at(time.Minute)), // 6: unordered, scheduled
		)
		got := b.claim(base, 100)
		wantJobs(t, "claim at base", got, jobs[0], jobs[2])
		for _, j := range got {
			wantState(t, j, store.StateRunning)
			wantHead(t, j, true)
			if j.Attempt != 1 {
				t.Errorf("job %d: Attempt %d, want 1", j.ID, j.Attempt)
			}
			if j.LeaseOwner != owner1 {
				t.Errorf("job %d: LeaseOwner %q, want %q", j.ID, j.LeaseOwner, owner1)
			}
			wantTime(t, fmt.Sprintf("job %d StartedAt", j.ID), j.StartedAt, base)
			stored := b.get(j.ID)
			wantState(t, stored, store.StateRunning)
			if stored.Attempt != 1 || stored.LeaseOwner != owner1 || !stored.StartedAt.Equal(base) {
				t.Errorf("Get(%d) after claim: Attempt %d, LeaseOwner %q, StartedAt %v", j.ID, stored.Attempt, stored.LeaseOwner, stored.StartedAt)
			}
		}
		// A running head is never claimed again, by anyone, at any time.
		if again := b.claimAs(at(time.Second), owner2, 100); len(again) != 0 {
			t.Fatalf("second claim got %v, want none", ids(again))
		}
		wantJobs(t, "claim when the unordered scheduled job is due", b.claim(at(time.Minute), 100), jobs[6])
		// run_at == Now is due; job 5 stays behind job 4.
		wantJobs(t, "claim at run_at", b.claim(at(time.Hour), 100), jobs[1], jobs[4])
		b.claimNone(at(3 * time.Hour))
	})

	t.Run("KindLimits", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name      string
			limits    []store.KindLimit
			max       int
			wantEmail int
			wantHook  int
		}{
			{"PerKindCaps", []store.KindLimit{{Kind: kindEmail, Max: 2}, {Kind: kindWebhook, Max: 5}}, 10, 2, 3},
			{"TotalCapTriedInOrder", []store.KindLimit{{Kind: kindEmail, Max: 5}, {Kind: kindWebhook, Max: 5}}, 4, 3, 1},
			{"TotalCapOtherOrder", []store.KindLimit{{Kind: kindWebhook, Max: 5}, {Kind: kindEmail, Max: 5}}, 4, 1, 3},
			{"UnlistedKindNotClaimed", []store.KindLimit{{Kind: kindWebhook, Max: 5}}, 10, 0, 3},
			{"UnknownKind", []store.KindLimit{{Kind: "sms", Max: 5}}, 10, 0, 0},
			{"ZeroKindCap", []store.KindLimit{{Kind: kindEmail, Max: 0}, {Kind: kindWebhook, Max: 1}}, 10, 0, 1},
			{"NoLimits", nil, 10, 0, 0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				var ps []store.InsertParams
				for i := range 3 {
					ps = append(ps, params(kindEmail, fmt.Sprintf("e%d", i)), params(kindWebhook, fmt.Sprintf("w%d", i)))
				}
				b.insert(base, ps...)
				got := b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(time.Minute), Limits: tt.limits, Max: tt.max})
				n := map[string]int{}
				for _, j := range got {
					n[j.Kind]++
				}
				if n[kindEmail] != tt.wantEmail || n[kindWebhook] != tt.wantHook || len(n) > 2 {
					t.Fatalf("claimed %v, want %d %s and %d %s", n, tt.wantEmail, kindEmail, tt.wantHook, kindWebhook)
				}
			})
		}
	})

	t.Run("HeadsOfDifferentKeysBothClaimable", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k1"), params(kindEmail, "k2"), params(kindEmail, "k1"), params(kindWebhook, "k2"))
		wantJobs(t, "claim", b.claim(base, 100), jobs[0], jobs[1])
	})

	// Within a kind the oldest run_at goes first, whatever the insertion
	// order and whether the job is ordered or not.
	t.Run("OldestRunAtFirst", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base,
			scheduled(kindEmail, "", at(3*time.Second)),
			scheduled(kindEmail, "k1", at(5*time.Second)),
			scheduled(kindEmail, "", at(time.Second)),
			scheduled(kindEmail, "k2", at(4*time.Second)),
			scheduled(kindEmail, "", at(2*time.Second)),
		)
		want := []int64{jobs[2].ID, jobs[4].ID, jobs[0].ID, jobs[3].ID, jobs[1].ID}
		var got []int64
		for range want {
			c := b.claimWith(store.ClaimParams{Now: at(time.Minute), Owner: owner1, LeaseUntil: at(time.Hour),
				Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
			if len(c) != 1 {
				t.Fatalf("claim with Max 1 returned %v", ids(c))
			}
			got = append(got, c[0].ID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("claim order %v, want %v (by run_at)", got, want)
		}
	})

	t.Run("MaxBoundsTotal", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		var ps []store.InsertParams
		for i := range 10 {
			ps = append(ps, params(kindEmail, fmt.Sprintf("k%d", i)))
		}
		b.insert(base, ps...)
		total := 0
		for _, limit := range []int{3, 3, 3, 3} {
			got := b.claim(base, limit)
			if len(got) > limit {
				t.Fatalf("claim with Max %d returned %d jobs", limit, len(got))
			}
			total += len(got)
		}
		if total != 10 {
			t.Fatalf("claimed %d jobs in total, want 10", total)
		}
	})
}

// exerciseFIFO walks many jobs through the store and checks the per-key
// guarantees: each key's jobs start in insertion order, one at a time.
func exerciseFIFO(t *testing.T, setup func(t *testing.T) *bundle) {
	// A line is busy while any of its jobs runs, whatever the kinds of the
	// jobs around it: a finished head of one kind must not be claimed again
	// while its successor of another kind runs.
	t.Run("MixedKindsOnOneKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindWebhook, "k"), params(kindEmail, "k"), params(kindWebhook, "k"))
		both := func(now time.Time) *store.ClaimParams {
			return &store.ClaimParams{Now: now, Owner: owner1, LeaseUntil: now.Add(time.Minute),
				Limits: []store.KindLimit{{Kind: kindEmail, Max: 10}, {Kind: kindWebhook, Max: 10}}, Max: 10}
		}
		running := b.claimWith(*both(base))
		wantJobs(t, "first claim", running, jobs[0])
		for i := 1; i < len(jobs); i++ {
			now := at(time.Duration(i) * time.Second)
			res, err := b.d.Exchange(t.Context(), store.ExchangeParams{Now: now, Claim: both(now),
				Finishes: []store.FinishParams{{ID: running[0].ID, Owner: owner1, Outcome: store.OutcomeCompleted}}})
			if err != nil {
				t.Fatalf("Exchange: %v", err)
			}
			wantJobs(t, "claimed after finishing the head", res.Claimed, jobs[i])
			b.claimNone(now)
			running = res.Claimed
		}
	})
	const keys, perKey = 5, 10
	keyOf := func(i int) string { return fmt.Sprintf("acct-%d", i%keys) }

	// insertAll inserts keys*perKey jobs in batches of 10, interleaving keys.
	insertAll := func(b *bundle) map[string][]int64 {
		want := map[string][]int64{}
		for batch := range perKey * keys / 10 {
			ps := make([]store.InsertParams, 10)
			for i := range ps {
				kind := kindEmail
				if i%3 == 0 {
					kind = kindWebhook // kinds do not split a key's line
				}
				ps[i] = params(kind, keyOf(batch*10+i))
			}
			for _, j := range b.insert(at(time.Duration(batch)*time.Millisecond), ps...) {
				want[j.Key] = append(want[j.Key], j.ID)
			}
		}
		return want
	}

	t.Run("Walk", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		want := insertAll(b)
		got := map[string][]int64{}
		inFlight := map[string]*store.Job{}
		var previous []*store.Job // claimed last round; completed this round
		now := at(time.Second)
		for round := 0; ; round++ {
			if round > 10*keys*perKey {
				t.Fatalf("no progress after %d rounds; got %v", round, got)
			}
			now = now.Add(time.Second)
			claimed := b.claim(now, 3) // a small Max leaves work for later rounds
			for _, j := range claimed {
				if other, ok := inFlight[j.Key]; ok {
					t.Fatalf("overlap on key %s: job %d claimed while job %d runs", j.Key, j.ID, other.ID)
				}
				inFlight[j.Key] = j
				got[j.Key] = append(got[j.Key], j.ID)
			}
			// Complete last round's jobs, so some jobs are always running
			// while the next claim happens.
			if len(previous) > 0 {
				b.complete(now, previous...)
				for _, j := range previous {
					delete(inFlight, j.Key)
				}
			}
			previous = claimed
			if len(claimed) == 0 && len(inFlight) == 0 {
				break
			}
		}
		for key, w := range want {
			if !slices.Equal(got[key], w) {
				t.Errorf("key %s ran %v, want insertion order %v", key, got[key], w)
			}
		}
		if n := len(b.list(store.ListParams{State: store.StateCompleted, Limit: 1000, Now: now})); n != keys*perKey {
			t.Errorf("%d jobs completed, want %d", n, keys*perKey)
		}
	})

	// Several claimers race; the store alone must keep each key serial.
	t.Run("ConcurrentClaimers", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		want := insertAll(b)
		var (
			mu       sync.Mutex
			inFlight = map[string]int64{}
			got      = map[string][]int64{}
			done     atomic.Int64
			wg       sync.WaitGroup
		)
		now := at(time.Second)
		for w := range 4 {
			owner := fmt.Sprintf("node-%d", w)
			wg.Go(func() {
				for spins := 0; done.Load() < keys*perKey && !t.Failed(); spins++ {
					if spins > 100000 {
						t.Errorf("%s: no progress", owner)
						return
					}
					jobs, err := b.d.Claim(t.Context(), store.ClaimParams{Now: now, Owner: owner, LeaseUntil: now.Add(time.Hour),
						Limits: []store.KindLimit{{Kind: kindEmail, Max: 2}, {Kind: kindWebhook, Max: 2}}, Max: 3})
					if err != nil {
						t.Errorf("%s: Claim: %v", owner, err)
						return
					}
					if len(jobs) == 0 {
						time.Sleep(time.Millisecond)
						continue
					}
					mu.Lock()
					for _, j := range jobs {
						if other, ok := inFlight[j.Key]; ok {
							t.Errorf("overlap on key %s: job %d claimed while job %d runs", j.Key, j.ID, other)
						}
						inFlight[j.Key] = j.ID
						got[j.Key] = append(got[j.Key], j.ID)
					}
					mu.Unlock()
					fs := make([]store.FinishParams, len(jobs))
					mu.Lock()
					for i, j := range jobs {
						fs[i] = store.FinishParams{ID: j.ID, Owner: owner, Outcome: store.OutcomeCompleted}
						delete(inFlight, j.Key) // before the commit that lets the next one start
					}
					mu.Unlock()
					res, err := b.d.FinishMany(t.Context(), store.FinishManyParams{Now: now, Finishes: fs})
					if err != nil {
						t.Errorf("%s: FinishMany: %v", owner, err)
						return
					}
					for _, r := range res {
						if r.Fenced {
							t.Errorf("%s: completing job %d was fenced", owner, r.ID)
						}
					}
					done.Add(int64(len(jobs)))
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for key, w := range want {
			if !slices.Equal(got[key], w) {
				t.Errorf("key %s ran %v, want insertion order %v", key, got[key], w)
			}
		}
	})
}

func exerciseLeases(t *testing.T, setup func(t *testing.T) *bundle) {
	t.Run("RescueExpired", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k1"), params(kindEmail, "k1"), params(kindEmail, "k2"))
		lease := at(30 * time.Second)
		expired := b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: lease,
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
		kept := b.claimWith(store.ClaimParams{Now: base, Owner: owner2, LeaseUntil: lease,
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
		if len(expired) != 1 || len(kept) != 1 || expired[0].ID != jobs[0].ID || kept[0].ID != jobs[2].ID {
			t.Fatalf("setup claims: %v and %v, want [%d] and [%d]", ids(expired), ids(kept), jobs[0].ID, jobs[2].ID)
		}
		if err := b.d.RenewLeases(t.Context(), owner2, at(2*time.Minute)); err != nil {
			t.Fatalf("RenewLeases: %v", err)
		}
		now := at(time.Minute)
		n, err := b.d.Rescue(t.Context(), store.RescueParams{Now: now, ExpiredBefore: now})
		if err != nil {
			t.Fatalf("Rescue: %v", err)
		}
		if n != 1 {
			t.Fatalf("Rescue returned %d, want 1", n)
		}
		rescued := b.get(jobs[0].ID)
		wantState(t, rescued, store.StateRetryable)
		wantHead(t, rescued, true)
		if rescued.LeaseOwner != "" {
			t.Errorf("rescued job keeps LeaseOwner %q", rescued.LeaseOwner)
		}
		if len(rescued.Errors) != 1 || rescued.Errors[0].Attempt != 1 || rescued.Errors[0].Message == "" ||
			!rescued.Errors[0].At.Equal(now) {
			t.Errorf("rescued job's Errors = %+v, want one error for attempt 1 at %v", rescued.Errors, now)
		}
		wantState(t, b.get(jobs[2].ID), store.StateRunning)
		wantHead(t, b.get(jobs[1].ID), false)

		// The old owner's late write is fenced off.
		res := b.finish(now, store.FinishParams{ID: jobs[0].ID, Owner: owner1, Outcome: store.OutcomeCompleted})
		if !res[0].Fenced {
			t.Fatal("finish by the owner whose lease expired was not fenced")
		}
		again := b.claimAs(now, "node-3", 100)
		if len(again) != 1 || again[0].ID != jobs[0].ID {
			t.Fatalf("claim after rescue got %v, want [%d] (its follower must wait)", ids(again), jobs[0].ID)
		}
		if again[0].Attempt != 2 || again[0].LeaseOwner != "node-3" {
			t.Errorf("reclaimed job: Attempt %d LeaseOwner %q, want 2 and node-3", again[0].Attempt, again[0].LeaseOwner)
		}
	})

	t.Run("TokensFenceStaleClaims", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		job := b.insertOne(base, params(kindEmail, "k"))
		first := b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(time.Second),
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
		if len(first) != 1 || first[0].LeaseToken == 0 {
			t.Fatalf("first claim = %+v, want one job with a non-zero LeaseToken", first)
		}
		if got := b.get(job.ID); got.LeaseToken != first[0].LeaseToken {
			t.Errorf("Get shows LeaseToken %d, want the claim's %d", got.LeaseToken, first[0].LeaseToken)
		}
		now := at(time.Minute)
		if n, err := b.d.Rescue(t.Context(), store.RescueParams{Now: now, ExpiredBefore: now}); err != nil || n != 1 {
			t.Fatalf("Rescue = %d, %v; want 1", n, err)
		}
		// The same node claims the job again: only the token tells the two
		// claims apart.
		second := b.claimWith(store.ClaimParams{Now: now, Owner: owner1, LeaseUntil: at(time.Hour),
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
		if len(second) != 1 || second[0].LeaseToken == first[0].LeaseToken {
			t.Fatalf("second claim = %+v, want job %d with a new LeaseToken", second, job.ID)
		}
		stale := store.FinishParams{ID: job.ID, Owner: owner1, LeaseToken: first[0].LeaseToken, Outcome: store.OutcomeCompleted}
		if res := b.finish(now, stale); !res[0].Fenced {
			t.Fatal("finish under the first claim's token was not fenced")
		}
		res, err := b.raw.FinishMany(t.Context(), store.FinishManyParams{Now: now,
			Finishes: []store.FinishParams{{ID: job.ID, Owner: owner1, Outcome: store.OutcomeCompleted}}})
		if err != nil || len(res) != 1 || !res[0].Fenced {
			t.Fatalf("finish without a token = %+v, %v; want fenced", res, err)
		}
		wantState(t, b.get(job.ID), store.StateRunning)
		b.finishOK(now, store.FinishParams{ID: job.ID, Owner: owner1, LeaseToken: second[0].LeaseToken, Outcome: store.OutcomeCompleted})
		wantState(t, b.get(job.ID), store.StateCompleted)
	})

	t.Run("ExpiredBeforeIsStrict", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name          string
			expiredBefore time.Time
			want          int
		}{
			{"LeaseEndsLater", at(29 * time.Second), 0},
			{"LeaseEndsAtCutoff", at(30 * time.Second), 0},
			{"LeaseEndedBefore", at(31 * time.Second), 1},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				b.insertOne(base, params(kindEmail, ""))
				b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(30 * time.Second),
					Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
				n, err := b.d.Rescue(t.Context(), store.RescueParams{Now: tt.expiredBefore, ExpiredBefore: tt.expiredBefore})
				if err != nil {
					t.Fatalf("Rescue: %v", err)
				}
				if n != tt.want {
					t.Fatalf("Rescue returned %d, want %d", n, tt.want)
				}
			})
		}
	})

	t.Run("RenewOnlyOwnersJobs", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.insert(base, params(kindEmail, "a"), params(kindEmail, "b"))
		b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(10 * time.Second), Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
		b.claimWith(store.ClaimParams{Now: base, Owner: owner2, LeaseUntil: at(10 * time.Second), Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
		for range 2 { // renewing twice is harmless
			if err := b.d.RenewLeases(t.Context(), owner1, at(time.Hour)); err != nil {
				t.Fatalf("RenewLeases: %v", err)
			}
		}
		if err := b.d.RenewLeases(t.Context(), "nobody", at(time.Hour)); err != nil {
			t.Fatalf("RenewLeases for an owner without jobs: %v", err)
		}
		n, err := b.d.Rescue(t.Context(), store.RescueParams{Now: at(time.Minute), ExpiredBefore: at(time.Minute)})
		if err != nil {
			t.Fatalf("Rescue: %v", err)
		}
		if n != 1 {
			t.Fatalf("Rescue returned %d, want 1 (only %s's job)", n, owner2)
		}
		running := b.list(store.ListParams{State: store.StateRunning, Now: at(time.Minute)})
		if len(running) != 1 || running[0].LeaseOwner != owner1 {
			t.Fatalf("running after rescue: %+v, want only %s's job", running, owner1)
		}
	})

	t.Run("RescueIgnoresNonRunning", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.insert(base, params(kindEmail, "a"), params(kindEmail, "a"), scheduled(kindEmail, "", at(time.Hour)))
		n, err := b.d.Rescue(t.Context(), store.RescueParams{Now: at(2 * time.Hour), ExpiredBefore: at(2 * time.Hour)})
		if err != nil {
			t.Fatalf("Rescue: %v", err)
		}
		if n != 0 {
			t.Fatalf("Rescue of pending jobs returned %d, want 0", n)
		}
	})
}

func exerciseNextRunAt(t *testing.T, setup func(t *testing.T) *bundle) {
	b := setup(t)
	next := func(kinds ...string) time.Time {
		t.Helper()
		ts, err := b.d.NextRunAt(t.Context(), kinds)
		if err != nil {
			t.Fatalf("NextRunAt(%v): %v", kinds, err)
		}
		return ts
	}
	wantTime(t, "NextRunAt on an empty store", next(kindEmail), time.Time{})

	head := b.insertOne(base, params(kindEmail, "k"))
	b.insertOne(base, scheduled(kindEmail, "k", at(-time.Minute))) // behind the head; not a head itself
	hook := b.insertOne(base, scheduled(kindWebhook, "", at(30*time.Second)))
	b.insertOne(base, scheduled(kindEmail, "late", at(time.Hour)))

	wantTime(t, "NextRunAt(email)", next(kindEmail), base)
	wantTime(t, "NextRunAt(webhook)", next(kindWebhook), hook.RunAt)
	wantTime(t, "NextRunAt(email, webhook)", next(kindEmail, kindWebhook), base)
	wantTime(t, "NextRunAt(sms)", next("sms"), time.Time{})
	wantTime(t, "NextRunAt()", next(), time.Time{})

	// Running heads and the jobs waiting behind them do not count.
	claimed := b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(time.Hour),
		Limits: []store.KindLimit{{Kind: kindEmail, Max: 10}}, Max: 10})
	if len(claimed) != 1 || claimed[0].ID != head.ID {
		t.Fatalf("claim got %v, want [%d]", ids(claimed), head.ID)
	}
	wantTime(t, "NextRunAt(email) while k runs", next(kindEmail), at(time.Hour))

	// A retryable head counts at its retry time.
	b.retry(at(time.Second), claimed[0], at(20*time.Minute), "boom")
	wantTime(t, "NextRunAt(email) after retry", next(kindEmail), at(20*time.Minute))

	// A blocking dead letter never becomes due.
	again := b.claimWith(store.ClaimParams{Now: at(20 * time.Minute), Owner: owner1, LeaseUntil: at(time.Hour),
		Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}}, Max: 1})
	if len(again) != 1 || again[0].ID != head.ID {
		t.Fatalf("claim got %v, want [%d]", ids(again), head.ID)
	}
	b.discard(at(21*time.Minute), again[0], true)
	wantTime(t, "NextRunAt(email) with k blocked", next(kindEmail), at(time.Hour))
}
