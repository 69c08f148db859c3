package storetest

import (
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

func exerciseExchange(t *testing.T, setup func(t *testing.T) *bundle) {
	exchange := func(b *bundle, p store.ExchangeParams) *store.ExchangeResult {
		b.t.Helper()
		res, err := b.d.Exchange(b.t.Context(), p)
		if err != nil {
			b.t.Fatalf("Exchange: %v", err)
		}
		if res == nil {
			b.t.Fatal("Exchange returned no result")
		}
		if len(res.Inserted) != len(p.Inserts) || len(res.Finished) != len(p.Finishes) {
			b.t.Fatalf("Exchange returned %d inserts and %d finishes for %d and %d",
				len(res.Inserted), len(res.Finished), len(p.Inserts), len(p.Finishes))
		}
		if p.Claim == nil && len(res.Claimed) != 0 {
			b.t.Fatalf("Exchange without a claim claimed %v", ids(res.Claimed))
		}
		return res
	}
	claimAll := func(now time.Time) *store.ClaimParams {
		return &store.ClaimParams{Now: now, Owner: owner1, LeaseUntil: now.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 100}, {Kind: kindWebhook, Max: 100}}, Max: 100}
	}

	// The engine's cycle: a finish frees the key's next job, which the same
	// exchange claims, along with a job inserted in it.
	t.Run("FinishInsertAndClaimInOneCall", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		first := b.claimOne(base)
		now := at(time.Second)
		res := exchange(b, store.ExchangeParams{
			Now:              now,
			Inserts:          []store.InsertParams{params(kindWebhook, "other"), params(kindWebhook, "k")},
			IdempotencySince: base,
			Finishes:         []store.FinishParams{{ID: first.ID, Owner: owner1, Outcome: store.OutcomeCompleted}},
			Claim:            claimAll(now),
		})
		if res.Finished[0].ID != first.ID || res.Finished[0].Fenced {
			t.Fatalf("Finished = %+v, want job %d not fenced", res.Finished, first.ID)
		}
		for _, r := range res.Inserted {
			if r.Existing || r.Job == nil {
				t.Fatalf("Inserted = %+v", res.Inserted)
			}
		}
		wantJobs(t, "claimed in the exchange", res.Claimed, jobs[1], res.Inserted[0].Job)
		for _, j := range res.Claimed {
			wantState(t, j, store.StateRunning)
			wantState(t, b.get(j.ID), store.StateRunning)
		}
		wantState(t, b.get(first.ID), store.StateCompleted)
		wantHead(t, b.get(res.Inserted[1].Job.ID), false)
	})

	t.Run("WritesOnly", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		res := exchange(b, store.ExchangeParams{Now: base, Inserts: []store.InsertParams{params(kindEmail, "k")}})
		wantHead(t, b.get(res.Inserted[0].Job.ID), true)
		if got := b.claimOne(base); got.ID != res.Inserted[0].Job.ID {
			t.Fatalf("claimed %d, want %d", got.ID, res.Inserted[0].Job.ID)
		}
	})

	t.Run("ClaimOnly", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		j := b.insertOne(base, params(kindEmail, "k"))
		res := exchange(b, store.ExchangeParams{Now: base, Claim: claimAll(base)})
		wantJobs(t, "claimed", res.Claimed, j)
	})

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		exchange(b, store.ExchangeParams{Now: base})
	})

	// An outcome the store does not know fails the exchange; nothing in it
	// takes effect.
	t.Run("AllOrNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.insert(base, params(kindEmail, "a"), params(kindEmail, "a"))
		first := b.claimOne(base)
		before := b.count()
		now := at(time.Second)
		_, err := b.d.Exchange(t.Context(), store.ExchangeParams{
			Now:     now,
			Inserts: []store.InsertParams{params(kindEmail, "b"), params(kindEmail, "")},
			Finishes: []store.FinishParams{
				{ID: first.ID, Owner: owner1, Outcome: store.OutcomeCompleted},
				{ID: first.ID, Owner: owner1, Outcome: store.Outcome(99)},
			},
			Claim: claimAll(now),
		})
		if err == nil {
			t.Fatal("Exchange with an unknown outcome succeeded")
		}
		if n := b.count(); n != before {
			t.Errorf("store holds %d jobs after a failed exchange, want %d", n, before)
		}
		got := b.get(first.ID)
		wantState(t, got, store.StateRunning)
		if got.LeaseOwner != owner1 {
			t.Errorf("LeaseOwner after a failed exchange = %q, want %q", got.LeaseOwner, owner1)
		}
		// The claim survived: its owner can still finish it.
		b.complete(at(2*time.Second), got)
	})
}
