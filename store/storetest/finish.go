package storetest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldmq/herald/store"
)

func exerciseFinishMany(t *testing.T, setup func(t *testing.T) *bundle) {
	t.Run("CompletedPromotesNext", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"), params(kindEmail, "k"))
		first := b.claimOne(base)
		b.complete(at(time.Second), first)
		done := b.get(first.ID)
		wantState(t, done, store.StateCompleted)
		wantHead(t, done, false)
		wantTime(t, "FinishedAt", done.FinishedAt, at(time.Second))
		if done.LeaseOwner != "" {
			t.Errorf("completed job keeps LeaseOwner %q", done.LeaseOwner)
		}
		wantHead(t, b.get(jobs[1].ID), true)
		wantHead(t, b.get(jobs[2].ID), false)
		if next := b.claimOne(at(time.Second)); next.ID != jobs[1].ID {
			t.Fatalf("claimed job %d after completion, want %d", next.ID, jobs[1].ID)
		}
	})

	t.Run("CompletedUnordered", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.insert(base, params(kindEmail, ""), params(kindEmail, ""))
		claimed := b.claim(base, 10)
		if len(claimed) != 2 {
			t.Fatalf("claimed %v, want both unordered jobs", ids(claimed))
		}
		b.complete(at(time.Second), claimed...)
		for _, j := range claimed {
			wantState(t, b.get(j.ID), store.StateCompleted)
		}
		b.claimNone(at(time.Hour))
	})

	t.Run("RetryKeepsHeadAndBlocksKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
		first := b.claimOne(base)
		b.retry(at(time.Second), first, at(30*time.Second), "connection refused")
		got := b.get(first.ID)
		wantState(t, got, store.StateRetryable)
		wantHead(t, got, true)
		wantTime(t, "RunAt after retry", got.RunAt, at(30*time.Second))
		if got.LeaseOwner != "" {
			t.Errorf("retryable job keeps LeaseOwner %q", got.LeaseOwner)
		}
		if !got.FinishedAt.IsZero() {
			t.Errorf("retryable job has FinishedAt %v", got.FinishedAt)
		}
		want := []store.AttemptError{{At: at(time.Second), Attempt: 1, Message: "connection refused"}}
		if diff := cmp.Diff(want, got.Errors, timeEqual); diff != "" {
			t.Errorf("Errors after retry (-want +got):\n%s", diff)
		}
		wantHead(t, b.get(jobs[1].ID), false)

		b.claimNone(at(10 * time.Second)) // the head waits for its backoff; the follower waits for the head
		second := b.claimOne(at(30 * time.Second))
		if second.ID != first.ID || second.Attempt != 2 {
			t.Fatalf("claimed job %d attempt %d, want job %d attempt 2", second.ID, second.Attempt, first.ID)
		}
		b.retry(at(31*time.Second), second, at(time.Minute), "timeout")
		want = append(want, store.AttemptError{At: at(31 * time.Second), Attempt: 2, Message: "timeout"})
		if diff := cmp.Diff(want, b.get(first.ID).Errors, timeEqual); diff != "" {
			t.Errorf("Errors after second retry (-want +got):\n%s", diff)
		}
		third := b.claimOne(at(time.Minute))
		if third.ID != first.ID || third.Attempt != 3 {
			t.Fatalf("claimed job %d attempt %d, want job %d attempt 3", third.ID, third.Attempt, first.ID)
		}
		b.complete(at(time.Minute), third)
		if next := b.claimOne(at(time.Minute)); next.ID != jobs[1].ID {
			t.Fatalf("claimed job %d after the retried head completed, want %d", next.ID, jobs[1].ID)
		}
	})

	t.Run("Discard", func(t *testing.T) {
		t.Parallel()
		for _, blockKey := range []bool{false, true} {
			name := "AdvancesKey"
			if blockKey {
				name = "BlockKey"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
				first := b.claimOne(base)
				b.finishOK(at(time.Second), store.FinishParams{ID: first.ID, Owner: owner1, Outcome: store.OutcomeDiscard,
					Error: "550 no such user", BlockKey: blockKey})
				dead := b.get(first.ID)
				wantState(t, dead, store.StateDiscarded)
				wantTime(t, "FinishedAt", dead.FinishedAt, at(time.Second))
				want := []store.AttemptError{{At: at(time.Second), Attempt: 1, Message: "550 no such user"}}
				if diff := cmp.Diff(want, dead.Errors, timeEqual); diff != "" {
					t.Errorf("Errors after discard (-want +got):\n%s", diff)
				}
				if dead.LeaseOwner != "" {
					t.Errorf("discarded job keeps LeaseOwner %q", dead.LeaseOwner)
				}
				wantHead(t, dead, blockKey)
				wantHead(t, b.get(jobs[1].ID), !blockKey)
				if blockKey {
					b.claimNone(at(time.Hour))
					b.insertOne(at(time.Hour), params(kindEmail, "k"))
					b.claimNone(at(2 * time.Hour))
					return
				}
				if next := b.claimOne(at(time.Second)); next.ID != jobs[1].ID {
					t.Fatalf("claimed job %d after discard, want %d", next.ID, jobs[1].ID)
				}
			})
		}
	})

	t.Run("Release", func(t *testing.T) {
		t.Parallel()
		t.Run("FreshJob", func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
			first := b.claimOne(base)
			b.finishOK(at(time.Second), store.FinishParams{ID: first.ID, Owner: owner1, Outcome: store.OutcomeRelease})
			got := b.get(first.ID)
			wantState(t, got, store.StateAvailable)
			wantHead(t, got, true)
			if got.Attempt != 0 || got.LeaseOwner != "" || len(got.Errors) != 0 {
				t.Errorf("released job: Attempt %d LeaseOwner %q Errors %v, want 0, \"\", none", got.Attempt, got.LeaseOwner, got.Errors)
			}
			wantHead(t, b.get(jobs[1].ID), false)
			again := b.claimOne(at(time.Second))
			if again.ID != first.ID || again.Attempt != 1 {
				t.Fatalf("claimed job %d attempt %d after release, want job %d attempt 1", again.ID, again.Attempt, first.ID)
			}
		})
		t.Run("AfterFailedAttempt", func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
			first := b.claimOne(base)
			b.retry(at(time.Second), first, at(2*time.Second), "boom")
			second := b.claimOne(at(2 * time.Second))
			b.finishOK(at(3*time.Second), store.FinishParams{ID: second.ID, Owner: owner1, Outcome: store.OutcomeRelease})
			got := b.get(first.ID)
			wantState(t, got, store.StateRetryable)
			wantHead(t, got, true)
			if got.Attempt != 1 || len(got.Errors) != 1 {
				t.Errorf("released job: Attempt %d, %d errors; want 1 and 1", got.Attempt, len(got.Errors))
			}
			again := b.claimOne(at(3 * time.Second))
			if again.ID != first.ID || again.Attempt != 2 {
				t.Fatalf("claimed job %d attempt %d after release, want job %d attempt 2", again.ID, again.Attempt, first.ID)
			}
		})
	})

	t.Run("Fenced", func(t *testing.T) {
		t.Parallel()
		outcomes := []struct {
			name string
			f    store.FinishParams
		}{
			{"Completed", store.FinishParams{Outcome: store.OutcomeCompleted}},
			{"Retry", store.FinishParams{Outcome: store.OutcomeRetry, Error: "x", RetryAt: at(time.Hour)}},
			{"Discard", store.FinishParams{Outcome: store.OutcomeDiscard, Error: "x"}},
			{"DiscardBlockKey", store.FinishParams{Outcome: store.OutcomeDiscard, Error: "x", BlockKey: true}},
			{"Release", store.FinishParams{Outcome: store.OutcomeRelease}},
		}
		for _, o := range outcomes {
			t.Run(o.name+"WrongOwner", func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
				b.claimOne(base)
				before := []*store.Job{b.get(jobs[0].ID), b.get(jobs[1].ID)}
				f := o.f
				f.ID, f.Owner = jobs[0].ID, owner2
				if res := b.finish(at(time.Second), f); !res[0].Fenced {
					t.Fatal("finish by a node that does not hold the lease was not fenced")
				}
				after := []*store.Job{b.get(jobs[0].ID), b.get(jobs[1].ID)}
				if diff := cmp.Diff(before, after, timeEqual); diff != "" {
					t.Fatalf("fenced finish changed jobs (-before +after):\n%s", diff)
				}
			})
			t.Run(o.name+"NotRunning", func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"))
				b.complete(at(time.Second), b.claimOne(base))
				before := []*store.Job{b.get(jobs[0].ID), b.get(jobs[1].ID)}
				f := o.f
				f.ID, f.Owner = jobs[0].ID, owner1
				if res := b.finish(at(2*time.Second), f); !res[0].Fenced {
					t.Fatal("finishing a job that is no longer running was not fenced")
				}
				after := []*store.Job{b.get(jobs[0].ID), b.get(jobs[1].ID)}
				if diff := cmp.Diff(before, after, timeEqual); diff != "" {
					t.Fatalf("fenced finish changed jobs (-before +after):\n%s", diff)
				}
			})
		}
	})

	t.Run("Output", func(t *testing.T) {
		t.Parallel()
		outcomes := []struct {
			name string
			f    store.FinishParams
		}{
			{"Completed", store.FinishParams{Outcome: store.OutcomeCompleted}},
			{"Retry", store.FinishParams{Outcome: store.OutcomeRetry, Error: "x", RetryAt: at(time.Second)}},
			{"Discard", store.FinishParams{Outcome: store.OutcomeDiscard, Error: "x"}},
			{"Release", store.FinishParams{Outcome: store.OutcomeRelease}},
		}
		for _, o := range outcomes {
			t.Run(o.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				job := b.insertOne(base, params(kindEmail, "k"))
				if got := b.get(job.ID).Output; got != nil {
					t.Fatalf("fresh job has Output %s, want nil", got)
				}
				claimed := b.claimOne(base)
				f := o.f
				f.ID, f.Owner = claimed.ID, owner1
				f.Output = json.RawMessage(`{"accepted":["a@example.com"]}`)
				b.finishOK(at(time.Second), f)
				if got := b.get(job.ID).Output; !jsonEqual(got, f.Output) {
					t.Fatalf("Output after %s = %s, want %s", o.name, got, f.Output)
				}
				if o.f.Outcome == store.OutcomeRetry || o.f.Outcome == store.OutcomeRelease {
					// The next attempt sees it, and a finish without output keeps it.
					again := b.claimOne(at(2 * time.Second))
					if !jsonEqual(again.Output, f.Output) {
						t.Fatalf("next attempt's Output = %s, want %s", again.Output, f.Output)
					}
					b.complete(at(3*time.Second), again)
					if got := b.get(job.ID).Output; !jsonEqual(got, f.Output) {
						t.Fatalf("Output after a finish without output = %s, want %s", got, f.Output)
					}
				}
			})
		}
	})

	t.Run("BatchOfOutcomes", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		keys := []string{"done", "retry", "dead", "blocked", "released", "stolen"}
		var ps []store.InsertParams
		for _, k := range keys {
			ps = append(ps, params(kindEmail, k), params(kindEmail, k))
		}
		jobs := b.insert(base, ps...)
		head := func(i int) *store.Job { return jobs[2*i] }
		next := func(i int) *store.Job { return jobs[2*i+1] }
		if got := b.claim(base, 100); len(got) != len(keys) {
			t.Fatalf("claimed %v, want the %d heads", ids(got), len(keys))
		}
		now := at(time.Second)
		res := b.finish(now,
			store.FinishParams{ID: head(0).ID, Owner: owner1, Outcome: store.OutcomeCompleted},
			store.FinishParams{ID: head(1).ID, Owner: owner1, Outcome: store.OutcomeRetry, Error: "e", RetryAt: at(time.Hour)},
			store.FinishParams{ID: head(2).ID, Owner: owner1, Outcome: store.OutcomeDiscard, Error: "e"},
			store.FinishParams{ID: head(3).ID, Owner: owner1, Outcome: store.OutcomeDiscard, Error: "e", BlockKey: true},
			store.FinishParams{ID: head(4).ID, Owner: owner1, Outcome: store.OutcomeRelease},
			store.FinishParams{ID: head(5).ID, Owner: owner2, Outcome: store.OutcomeCompleted},
		)
		for i, r := range res {
			if r.Fenced != (i == 5) {
				t.Errorf("result %d (key %s): Fenced = %v", i, keys[i], r.Fenced)
			}
		}
		wantStates := []store.State{store.StateCompleted, store.StateRetryable, store.StateDiscarded,
			store.StateDiscarded, store.StateAvailable, store.StateRunning}
		for i, s := range wantStates {
			wantState(t, b.get(head(i).ID), s)
		}
		wantJobs(t, "claim after the batch", b.claim(now, 100), next(0), next(2), head(4))
	})

	t.Run("EmptyBatch", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if res := b.finish(base); len(res) != 0 {
			t.Fatalf("FinishMany(nothing) returned %v", res)
		}
	})
}

// timeEqual compares times as instants, ignoring location and monotonic
// readings.
var timeEqual = cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })

// jsonEqual compares JSON documents by value, since a driver may store JSON
// in a normalized form (PostgreSQL's jsonb reorders keys and whitespace).
func jsonEqual(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return cmp.Equal(x, y)
}
