package postgres

import (
	"slices"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// TestFinishAndClaimHandOff: an exchange that finishes a line's head and
// claims in the same cycle (one statement) gives the head's successor to
// the claim on the same terms as any ready line (kind caps, run_at order,
// due time), writing the line straight to running when it does and
// leaving it ready when it does not; retries and releases, which keep
// their line's head, go through the separate statements and are claimed
// again in the same cycle as before.
func TestFinishAndClaimHandOff(t *testing.T) {
	t.Parallel()
	base := time.Now().Add(-time.Minute)

	type job struct {
		kind string
		at   time.Duration // run_at after base
	}
	for _, tt := range []struct {
		name string
		// next is the successor of the running head (kind k, due at
		// base); other, if set, heads a second, ready line.
		next, other *job
		outcome     store.Outcome
		limits      []store.KindLimit
		max         int
		// want names the jobs the exchange claims: "head", "next",
		// "other"; wantBlocked is the first line's state after it.
		want        []string
		wantBlocked int16
		fenced      bool // the outcome carries a stale lease token
	}{
		{name: "successor handed off", next: &job{"k", time.Second}, outcome: store.OutcomeCompleted,
			limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, want: []string{"next"}, wantBlocked: 2},
		{name: "discarded head hands off too", next: &job{"k", time.Second}, outcome: store.OutcomeDiscard,
			limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, want: []string{"next"}, wantBlocked: 2},
		{name: "successor of a kind without free slots stays ready", next: &job{"other", time.Second},
			outcome: store.OutcomeCompleted, limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, wantBlocked: 0},
		{name: "older ready line goes first", next: &job{"k", 2 * time.Second}, other: &job{"k", time.Second},
			outcome: store.OutcomeCompleted, limits: []store.KindLimit{{Kind: "k", Max: 1}}, max: 1,
			want: []string{"other"}, wantBlocked: 0},
		{name: "successor older than the ready line goes first", next: &job{"k", time.Second}, other: &job{"k", 2 * time.Second},
			outcome: store.OutcomeCompleted, limits: []store.KindLimit{{Kind: "k", Max: 1}}, max: 1,
			want: []string{"next"}, wantBlocked: 2},
		{name: "both within the caps", next: &job{"k", 2 * time.Second}, other: &job{"k", time.Second},
			outcome: store.OutcomeCompleted, limits: []store.KindLimit{{Kind: "k", Max: 2}}, max: 2,
			want: []string{"next", "other"}, wantBlocked: 2},
		{name: "successor not yet due stays waiting", next: &job{"k", time.Hour + time.Minute},
			outcome: store.OutcomeCompleted, limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, wantBlocked: 0},
		{name: "last job: line dropped", outcome: store.OutcomeCompleted,
			limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, wantBlocked: -1},
		{name: "fenced outcome hands nothing off", next: &job{"k", time.Second}, outcome: store.OutcomeCompleted, fenced: true,
			limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, wantBlocked: 2},
		{name: "released head is claimed again", next: &job{"k", time.Second}, outcome: store.OutcomeRelease,
			limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, want: []string{"head"}, wantBlocked: 2},
		{name: "retried head due now is claimed again", next: &job{"k", time.Second}, outcome: store.OutcomeRetry,
			limits: []store.KindLimit{{Kind: "k", Max: 5}}, max: 5, want: []string{"head"}, wantBlocked: 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A schema per case: claims see no other case's lines.
			s, err := Open(t.Context(), pgtest.SchemaURL(t), Options{MaxConns: 2})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			key, otherKey := "a", "b"
			// Scheduled jobs keep their run_at as due time, so base-relative
			// times order the lines whatever the insert times.
			insert := func(key string, j job) *store.Job {
				t.Helper()
				res, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: base.Add(-time.Hour),
					Jobs: []store.InsertParams{{Kind: j.kind, Key: key, MaxAttempts: 3, RunAt: base.Add(j.at)}}})
				if err != nil {
					t.Fatal(err)
				}
				return res[0].Job
			}
			head := insert(key, job{"k", 0})
			ids := map[int64]string{head.ID: "head"}
			got, err := s.Claim(t.Context(), store.ClaimParams{Now: base, Owner: "n", LeaseUntil: base.Add(time.Hour),
				Limits: []store.KindLimit{{Kind: "k", Max: 1}}, Max: 1})
			if err != nil || len(got) != 1 || got[0].ID != head.ID {
				t.Fatalf("claim of the head = %v, %v", got, err)
			}
			if tt.next != nil {
				ids[insert(key, *tt.next).ID] = "next"
			}
			if tt.other != nil {
				ids[insert(otherKey, *tt.other).ID] = "other"
			}
			now := base.Add(time.Hour)
			token := got[0].LeaseToken
			if tt.fenced {
				token++
			}
			res, err := s.Exchange(t.Context(), store.ExchangeParams{Now: now,
				Finishes: []store.FinishParams{{ID: head.ID, Owner: "n", LeaseToken: token, Outcome: tt.outcome, RetryAt: now}},
				Claim:    &store.ClaimParams{Now: now, Owner: "n", LeaseUntil: now.Add(time.Hour), Limits: tt.limits, Max: tt.max}})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Finished) != 1 || res.Finished[0].Fenced != tt.fenced {
				t.Fatalf("finished = %+v, want fenced %v", res.Finished, tt.fenced)
			}
			var claimed []string
			for _, j := range res.Claimed {
				if j.State != store.StateRunning || j.LeaseOwner != "n" || j.LeaseToken == 0 || !j.Head {
					t.Errorf("claimed job %d (%s): %+v", j.ID, ids[j.ID], j)
				}
				claimed = append(claimed, ids[j.ID])
			}
			slices.Sort(claimed)
			if !slices.Equal(claimed, tt.want) {
				t.Errorf("claimed %v, want %v", claimed, tt.want)
			}
			blocked := int16(-1)
			var headID int64
			err = s.pool.QueryRow(t.Context(), s.q(`SELECT blocked, head_id FROM _s.lines WHERE key = $1`), key).Scan(&blocked, &headID)
			if err != nil && !errNoRows(err) {
				t.Fatal(err)
			}
			if blocked != tt.wantBlocked {
				t.Errorf("line blocked = %d, want %d", blocked, tt.wantBlocked)
			}
			wantHead := "next"
			if tt.fenced || tt.outcome == store.OutcomeRetry || tt.outcome == store.OutcomeRelease {
				wantHead = "head"
			}
			if blocked >= 0 && ids[headID] != wantHead {
				t.Errorf("line head = %d (%s), want the %s", headID, ids[headID], wantHead)
			}
			// Every job still waiting can be claimed, one line at a time,
			// and a running line gives nothing.
			later := now.Add(2 * time.Hour)
			again, err := s.Claim(t.Context(), store.ClaimParams{Now: later, Owner: "n", LeaseUntil: later.Add(time.Hour),
				Limits: []store.KindLimit{{Kind: "k", Max: 10}, {Kind: "other", Max: 10}}, Max: 20})
			if err != nil {
				t.Fatal(err)
			}
			for _, j := range again {
				if slices.Contains(claimed, ids[j.ID]) {
					t.Errorf("job %d (%s) claimed twice", j.ID, ids[j.ID])
				}
				claimed = append(claimed, ids[j.ID])
			}
			if tt.wantBlocked == 2 && slices.ContainsFunc(again, func(j *store.Job) bool { return j.Key == key }) {
				t.Errorf("a running line gave a job to the next claim")
			}
			if tt.wantBlocked == 0 && !slices.ContainsFunc(again, func(j *store.Job) bool { return j.Key == key }) {
				t.Errorf("the ready line gave nothing to the next claim")
			}
		})
	}
}

// TestHandOffUpdatesLineInPlace: the line write of a hand-off changes no
// indexed value (the line stays running), so PostgreSQL updates the row
// in place (a heap-only tuple) instead of adding index entries; a claim
// that takes a ready line does change them.
func TestHandOffUpdatesLineInPlace(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), pgtest.SchemaURL(t), Options{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	now := time.Now()
	if _, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: now, Jobs: []store.InsertParams{
		{Kind: "k", Key: "key", MaxAttempts: 1}, {Kind: "k", Key: "key", MaxAttempts: 1}}}); err != nil {
		t.Fatal(err)
	}
	claim := store.ClaimParams{Now: now, Owner: "n", LeaseUntil: now.Add(time.Hour),
		Limits: []store.KindLimit{{Kind: "k", Max: 5}}, Max: 5}
	got, err := s.Claim(t.Context(), claim)
	if err != nil || len(got) != 1 {
		t.Fatalf("claim = %v, %v", got, err)
	}
	res, err := s.Exchange(t.Context(), store.ExchangeParams{Now: now, Claim: &claim, Finishes: []store.FinishParams{
		{ID: got[0].ID, Owner: "n", LeaseToken: got[0].LeaseToken, Outcome: store.OutcomeCompleted}}})
	if err != nil || len(res.Claimed) != 1 {
		t.Fatalf("finish and claim = %+v, %v", res, err)
	}
	// Statistics reach the shared view once the backend that wrote them
	// goes idle (at most once a second).
	var upd, hot int64
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := s.pool.QueryRow(t.Context(), `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
			WHERE schemaname = $1 AND relname = 'lines'`, s.schema).Scan(&upd, &hot); err != nil {
			t.Fatal(err)
		}
		if upd >= 2 {
			break
		}
	}
	if upd != 2 || hot != 1 {
		t.Errorf("lines: %d updates, %d in place; want 2 (the claim's and the hand-off's), the hand-off's in place", upd, hot)
	}
}
