package sqlite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// TestLineMemoMatchesDatabase drives a store through random inserts
// (immediate and scheduled, some with idempotency keys), claims, every kind
// of outcome, operator retries and cancels, and after every step compares
// each line the memo follows with the database: the memo must hold exactly
// the pending jobs behind the line's effective head, in line order (or a
// prefix of them, for a line it knows only in part).
func TestLineMemoMatchesDatabase(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		seed  uint64
		memo  int // LineMemoMiB
		steps int
	}{
		{"seed1", 1, 0, 400},
		{"seed2", 2, 0, 400},
		{"seed3", 3, 0, 400},
		// A budget so small that lines are forgotten all the time.
		{"tiny-budget", 4, 0, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s, err := Open(ctx, filepath.Join(t.TempDir(), "herald.db"), Options{LineMemoMiB: tc.memo})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Error(err)
				}
			})
			if tc.name == "tiny-budget" {
				s.memo.budget = 2000
			}
			rng := rand.New(rand.NewPCG(tc.seed, 7))
			now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			keys := []string{"a", "b", "c", "d", "e"}
			var running []*store.Job
			var ids []int64
			hits := 0
			for step := range tc.steps {
				now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
				var p store.ExchangeParams
				p.Now = now
				for range rng.IntN(6) {
					in := store.InsertParams{Kind: "k", Key: keys[rng.IntN(len(keys))],
						Payload: json.RawMessage(fmt.Sprintf(`{"step":%d}`, step)), MaxAttempts: 1 + rng.IntN(3)}
					switch rng.IntN(10) {
					case 0:
						in.RunAt = now.Add(time.Duration(rng.IntN(10)) * time.Second)
					case 1:
						in.IdempotencyKey = fmt.Sprintf("idem-%d", rng.IntN(20))
					}
					p.Inserts = append(p.Inserts, in)
				}
				p.IdempotencySince = now.Add(-5 * time.Second)
				for _, j := range running {
					if rng.IntN(3) == 0 {
						p.Finishes = append(p.Finishes, store.FinishParams{ID: j.ID, Owner: "o", LeaseToken: j.LeaseToken})
						continue
					}
					running[len(p.Finishes)] = j // keep it running (compacted below)
				}
				running = running[:len(running)-len(p.Finishes)]
				for i := range p.Finishes {
					f := &p.Finishes[i]
					switch rng.IntN(8) {
					case 0:
						f.Outcome, f.RetryAt, f.Error = store.OutcomeRetry, now.Add(time.Second), "retry"
					case 1:
						f.Outcome, f.Error = store.OutcomeDiscard, "discard"
					case 2:
						f.Outcome, f.Error, f.BlockKey = store.OutcomeDiscard, "block", true
					case 3:
						f.Outcome = store.OutcomeRelease
					default:
						f.Outcome = store.OutcomeCompleted
					}
				}
				if rng.IntN(4) > 0 {
					p.Claim = &store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Hour),
						Limits: []store.KindLimit{{Kind: "k", Max: 3}}, Max: 3}
				}
				res, err := s.Exchange(ctx, p)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				for _, r := range res.Inserted {
					if !r.Existing {
						ids = append(ids, r.Job.ID)
					}
				}
				running = append(running, res.Claimed...)
				if len(ids) > 0 && rng.IntN(6) == 0 {
					id := ids[rng.IntN(len(ids))]
					if rng.IntN(2) == 0 {
						_, err = s.Cancel(ctx, id, now)
					} else {
						_, err = s.Retry(ctx, id, now)
					}
					if err != nil && !errors.Is(err, store.ErrWrongState) && !errors.Is(err, store.ErrNotFound) {
						t.Fatalf("step %d: operator on job %d: %v", step, id, err)
					}
				}
				hits += checkMemo(t, s, step)
			}
			if tc.name != "tiny-budget" && hits == 0 {
				t.Fatal("the memo followed no line with queued jobs: the test checks nothing")
			}
		})
	}
}

// checkMemo compares every remembered line with the database and returns
// how many remembered lines had jobs queued.
func checkMemo(t *testing.T, s *Store, step int) int {
	t.Helper()
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	n := 0
	for kh, l := range s.memo.lines {
		headID := l.headID
		if running, ok := s.claims.runningOn(kh); ok {
			if running != headID {
				t.Fatalf("step %d: line %d: memo head %d, job %d runs", step, kh, headID, running)
			}
		} else {
			var lineHead int64
			if err := s.writer.QueryRowContext(t.Context(), `SELECT head_id FROM herald_lines WHERE kh = ?`, kh).Scan(&lineHead); err != nil {
				t.Fatalf("step %d: line %d remembered but not in the database: %v", step, kh, err)
			}
			if lineHead != headID {
				t.Fatalf("step %d: line %d: memo head %d, line row head %d", step, kh, headID, lineHead)
			}
		}
		rows, err := s.writer.QueryContext(t.Context(), `SELECT id FROM herald_jobs WHERE kh = ?1 AND (due_at, id) > (?2, ?3) AND state < 4
			ORDER BY due_at, id`, kh, l.headDue, headID)
		if err != nil {
			t.Fatal(err)
		}
		var want []int64
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			want = append(want, id)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			t.Fatal(err)
		}
		got, _ := s.memo.queued(kh)
		if l.complete && !slices.Equal(got, want) || !l.complete && (len(got) > len(want) || !slices.Equal(got, want[:len(got)])) {
			t.Fatalf("step %d: line %d (complete %v): memo queues %v, database %v", step, kh, l.complete, got, want)
		}
		if len(got) > 0 {
			n++
		}
	}
	return n
}
