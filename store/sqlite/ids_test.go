package sqlite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// Ids are assigned in memory from what is on disk; pruning the newest jobs
// and reopening must not hand their ids out again (a client may still hold
// them).
func TestIDsNotReusedAfterPruneAndReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "herald.db")
	now := time.Now()
	open := func() *Store {
		s, err := Open(ctx, path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	insert := func(s *Store, n int) []int64 {
		ps := make([]store.InsertParams, n)
		for i := range ps {
			ps[i] = store.InsertParams{Kind: "k", Payload: json.RawMessage(`{}`), MaxAttempts: 1}
		}
		res, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: ps, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]int64, n)
		for i, r := range res {
			ids[i] = r.Job.ID
		}
		return ids
	}
	s := open()
	first := insert(s, 100) // 64 + 8*4 + 1*4 rows: every chunk size
	for i := 1; i < len(first); i++ {
		if first[i] != first[i-1]+1 {
			t.Fatalf("ids of one batch are not consecutive: %v", first)
		}
	}
	if n := completeAll(t, s, now); n != len(first) {
		t.Fatalf("completed %d jobs; want %d", n, len(first))
	}
	n, err := s.Prune(ctx, store.PruneParams{CompletedBefore: now.Add(time.Hour), Limit: 1000})
	if err != nil || n != len(first) {
		t.Fatalf("Prune = %d, %v; want %d", n, err, len(first))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if again := insert(s, 1)[0]; again <= first[len(first)-1] {
		t.Fatalf("after pruning every job and reopening, new id %d reuses an old one (last was %d)", again, first[len(first)-1])
	}
}

// Prune on an empty database (a fresh node's first maintenance) must not
// fail: it used to store max(id) of no rows, NULL, as the id floor.
func TestPruneEmptyDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "herald.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close() //nolint:errcheck // test
	now := time.Now()
	n, err := s.Prune(ctx, store.PruneParams{CompletedBefore: now, DiscardedBefore: now, IdempotencyBefore: now})
	if err != nil || n != 0 {
		t.Fatalf("Prune on an empty database = %d, %v; want 0, nil", n, err)
	}
	if err := s.loadLastID(ctx); err != nil || s.lastID != 0 {
		t.Fatalf("last id after pruning nothing = %d, %v; want 0", s.lastID, err)
	}
}

// Inserts leave ids to SQLite while its next rowid is the store's next id,
// and name them explicitly once a prune may have deleted the newest job.
// Either way every job must be stored under the id its caller was given;
// and if the two ever drift apart, the cycle must fail, not store a job
// under another id.
func TestRowIDsFollowStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	now := time.Now()
	batch := 0
	insert := func(n int) ([]int64, error) {
		batch++
		ps := make([]store.InsertParams, n)
		for i := range ps {
			ps[i] = store.InsertParams{Kind: "k", Key: "line", MaxAttempts: 1,
				Payload: json.RawMessage(fmt.Sprintf(`{"batch":%d,"i":%d}`, batch, i))}
		}
		res, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: ps, Now: now})
		if err != nil {
			return nil, err
		}
		ids := make([]int64, n)
		for i, r := range res {
			ids[i] = r.Job.ID
			got, err := s.Get(ctx, r.Job.ID)
			if err != nil {
				t.Fatalf("Get(%d): %v", r.Job.ID, err)
			}
			if want := fmt.Sprintf(`{"batch":%d,"i":%d}`, batch, i); string(got.Payload) != want {
				t.Fatalf("job %d holds %s; want %s", r.Job.ID, got.Payload, want)
			}
		}
		return ids, nil
	}
	mustInsert := func(n int) []int64 {
		t.Helper()
		ids, err := insert(n)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if !s.rowidIsLastID {
		t.Fatal("a fresh store names ids explicitly")
	}
	first := mustInsert(100)
	completeAll(t, s, now)
	if n, err := s.Prune(ctx, store.PruneParams{CompletedBefore: now.Add(time.Hour), Limit: 1000}); err != nil || n != 100 {
		t.Fatalf("Prune = %d, %v; want 100", n, err)
	}
	if s.rowidIsLastID {
		t.Fatal("after a prune the store still leaves ids to SQLite, which would reuse them")
	}
	again := mustInsert(3)
	if again[0] <= first[len(first)-1] {
		t.Fatalf("after pruning the newest jobs, id %d reuses an old one (last was %d)", again[0], first[len(first)-1])
	}
	if !s.rowidIsLastID {
		t.Fatal("an insert with explicit ids did not put SQLite's rowid back in step")
	}
	mustInsert(100)

	// Break the invariant behind the store's back: the rows go, the flag
	// stays. The insert must fail and store nothing; the next one works.
	completeAll(t, s, now)
	if _, err := s.Prune(ctx, store.PruneParams{CompletedBefore: now.Add(time.Hour), Limit: 1000}); err != nil {
		t.Fatal(err)
	}
	s.rowidIsLastID = true
	lastBefore := s.lastID
	if _, err := insert(10); !errors.Is(err, errRowidDrift) {
		t.Fatalf("insert with drifted rowids: %v; want errRowidDrift", err)
	}
	if jobs, err := s.List(ctx, store.ListParams{Limit: 100}); err != nil || len(jobs) != 0 {
		t.Fatalf("after the failed insert the store holds %d jobs (%v); want none", len(jobs), err)
	}
	if ids := mustInsert(10); ids[0] <= lastBefore {
		t.Fatalf("id %d after a failed insert reuses one handed out before (%d)", ids[0], lastBefore)
	}
}

// completeAll claims and completes every job of kind "k" that is ready at
// now, line by line, and returns how many it completed.
func completeAll(t *testing.T, s *Store, now time.Time) int {
	t.Helper()
	ctx := context.Background()
	total := 0
	completed := map[int64]bool{}
	for {
		claimed, err := s.Claim(ctx, store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: "k", Max: 1000}}, Max: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(claimed) == 0 {
			return total
		}
		fs := make([]store.FinishParams, len(claimed))
		for i, j := range claimed {
			if completed[j.ID] {
				t.Fatalf("job %d claimed again after it was completed", j.ID)
			}
			completed[j.ID] = true
			fs[i] = store.FinishParams{ID: j.ID, Owner: "o", LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}
		}
		if _, err := s.FinishMany(ctx, store.FinishManyParams{Now: now, Finishes: fs}); err != nil {
			t.Fatal(err)
		}
		total += len(claimed)
	}
}
