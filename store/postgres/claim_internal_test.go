package postgres

import (
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// napStores opens two stores on one new schema: fast, and slow, whose
// claim (the driver's own statement) sleeps a second after taking its
// snapshot.
func napStores(t *testing.T) (fast, slow *Store) {
	t.Helper()
	u := pgtest.SchemaURL(t)
	open := func() *Store {
		s, err := Open(t.Context(), u, Options{MaxConns: 2})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	fast, slow = open(), open()
	slow.sql.claim = strings.Replace(strings.Replace(slow.sql.claim,
		"WITH k AS (", "WITH nap AS MATERIALIZED (SELECT pg_sleep(1)), k AS (", 1),
		"WHERE n > 0", "WHERE n > 0 AND EXISTS (SELECT 1 FROM nap)", 1)
	if slow.sql.claim == fast.sql.claim {
		t.Fatal("could not slow the claim down")
	}
	return fast, slow
}

type claimResult struct {
	jobs []*store.Job
	err  error
}

func claimOne(t *testing.T, s *Store, owner string) ([]*store.Job, error) {
	t.Helper()
	now := time.Now()
	return s.Claim(t.Context(), store.ClaimParams{Now: now, Owner: owner, LeaseUntil: now.Add(time.Hour),
		Limits: []store.KindLimit{{Kind: "k", Max: 1}}, Max: 1})
}

// startSlowClaim starts slow's claim and returns once it has its
// snapshot (it then sleeps for a second).
func startSlowClaim(t *testing.T, slow *Store) <-chan claimResult {
	t.Helper()
	done := make(chan claimResult, 1)
	go func() {
		jobs, err := claimOne(t, slow, "slow")
		done <- claimResult{jobs, err}
	}()
	time.Sleep(300 * time.Millisecond)
	return done
}

func insertOne(t *testing.T, s *Store, now time.Time) *store.Job {
	t.Helper()
	res, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: now,
		Jobs: []store.InsertParams{{Kind: "k", Key: "key", Payload: []byte(`{}`), MaxAttempts: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	return res[0].Job
}

// A claim whose statement took its snapshot before another node claimed
// and completed the line's head locks the line as it is now, with the
// next job at its head, and takes that job: it must mark the line running
// (by key: the row its snapshot sees still names the old head), or the
// line stays ready while its head runs and the job is claimed twice.
func TestClaimAfterHeadMoved(t *testing.T) {
	t.Parallel()
	fast, slow := napStores(t)
	base := time.Now().Add(-time.Second)
	first, second := insertOne(t, fast, base), insertOne(t, fast, base.Add(time.Millisecond))
	done := startSlowClaim(t, slow)
	got, err := claimOne(t, fast, "fast")
	if err != nil || len(got) != 1 || got[0].ID != first.ID {
		t.Fatalf("fast claim = %v, %v; want job %d", got, err, first.ID)
	}
	if _, err := fast.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: []store.FinishParams{{
		ID: first.ID, Owner: "fast", LeaseToken: got[0].LeaseToken, Outcome: store.OutcomeCompleted}}}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || len(r.jobs) != 1 || r.jobs[0].ID != second.ID {
		t.Fatalf("slow claim = %v, %v; want job %d", r.jobs, r.err, second.ID)
	}
	if again, err := claimOne(t, fast, "fast"); err != nil || len(again) != 0 {
		t.Errorf("claim while job %d runs = %v, %v; want nothing (the line must be marked running)", second.ID, again, err)
	}
}

// A claim whose statement took its snapshot before a newcomer due earlier
// than the waiting head took the head's place locks the line with the
// newcomer at its head, but cannot see the newcomer: it must leave the
// line ready (not mark it running with nobody running its head, which
// held the key for ever), so the next claim takes the newcomer.
func TestClaimAfterNewcomerTookHead(t *testing.T) {
	t.Parallel()
	fast, slow := napStores(t)
	base := time.Now().Add(-time.Second)
	insertOne(t, fast, base)
	done := startSlowClaim(t, slow)
	early := insertOne(t, fast, base.Add(-time.Second))
	if !early.Head {
		t.Fatalf("newcomer due before the waiting head: Head = false, want true")
	}
	if r := <-done; r.err != nil || len(r.jobs) != 0 {
		t.Fatalf("slow claim = %v, %v; want nothing (its snapshot cannot see the new head)", r.jobs, r.err)
	}
	if got, err := claimOne(t, fast, "fast"); err != nil || len(got) != 1 || got[0].ID != early.ID {
		t.Errorf("next claim = %v, %v; want the newcomer %d", got, err, early.ID)
	}
}

// TestFinishKeyFromClaimOrLookup: a finish locks its job's key whether the
// store claimed the job itself (it remembers the key) or not (it looks the
// key up), and either way the line moves on to the next job. The store
// forgets a key once the job's outcome is written.
func TestFinishKeyFromClaimOrLookup(t *testing.T) {
	a, b := napStores(t) // b's claim is slow; only its finishes are used
	now := time.Now()
	var ins []store.InsertParams
	for range 3 {
		ins = append(ins, store.InsertParams{Kind: "k", Key: "key", MaxAttempts: 1})
	}
	if _, err := a.InsertMany(t.Context(), store.InsertManyParams{Now: now, Jobs: ins, IdempotencySince: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	finish := func(s *Store, j *store.Job) {
		t.Helper()
		res, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: []store.FinishParams{
			{ID: j.ID, Owner: "a", LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}}})
		if err != nil || res[0].Fenced {
			t.Fatalf("finish job %d: %+v, %v", j.ID, res, err)
		}
	}
	var ids []int64
	for i, s := range []*Store{a, b, a} { // remembered key, looked-up key, remembered again
		jobs, err := claimOne(t, a, "a")
		if err != nil || len(jobs) != 1 {
			t.Fatalf("claim %d: %v, %v", i, jobs, err)
		}
		a.keysMu.Lock()
		key, ok := a.claimedKeys[jobs[0].ID]
		a.keysMu.Unlock()
		if !ok || key != "key" {
			t.Fatalf("claim %d: store remembers key %q (%v)", i, key, ok)
		}
		finish(s, jobs[0])
		ids = append(ids, jobs[0].ID)
	}
	if ids[0] >= ids[1] || ids[1] >= ids[2] {
		t.Errorf("jobs ran in order %v, want ascending ids", ids)
	}
	a.keysMu.Lock()
	defer a.keysMu.Unlock()
	// The job b finished stays remembered by a (a never saw its outcome);
	// the two a finished are forgotten.
	if len(a.claimedKeys) != 1 {
		t.Errorf("store remembers %d keys after the finishes, want 1 (the job another store finished): %v", len(a.claimedKeys), a.claimedKeys)
	}
	if _, ok := a.claimedKeys[ids[1]]; !ok {
		t.Errorf("store forgot job %d, which another store finished", ids[1])
	}
}
