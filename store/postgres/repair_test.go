package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// rawExec runs sql in schema on a connection of its own, to break what
// the driver keeps.
func rawExec(t *testing.T, schema, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, `SET search_path = `+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Each invariant of the lines, broken by hand, is repaired, and then
// every job runs.
func TestRepairLines(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	base := time.Now().Add(-time.Minute)
	insert := func(key string, at time.Time) *store.Job {
		t.Helper()
		res, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: at,
			Jobs: []store.InsertParams{{Kind: "k", Key: key, Payload: []byte(`{}`), MaxAttempts: 3}}})
		if err != nil {
			t.Fatal(err)
		}
		return res[0].Job
	}
	claim := func(want int64) *store.Job {
		t.Helper()
		jobs, err := s.Claim(t.Context(), store.ClaimParams{Now: time.Now(), Owner: "a", LeaseUntil: time.Now().Add(time.Hour),
			Limits: []store.KindLimit{{Kind: "k", Max: 1}}, Max: 1})
		if err != nil || len(jobs) != 1 || jobs[0].ID != want {
			t.Fatalf("claim = %v, %v; want job %d", jobs, err, want)
		}
		return jobs[0]
	}
	// stuck: a line marked running whose head is not.
	a1 := insert("a", base)
	claim(a1.ID)
	rawExec(t, s.Schema(), `UPDATE jobs SET state = 1, lease_owner = NULL, lease_token = NULL, lease_until = NULL WHERE id = $1`, a1.ID)
	// ahead: a job due before its line's running head.
	b1 := insert("b", base.Add(time.Millisecond))
	b2 := insert("b", base.Add(2*time.Millisecond))
	running := claim(b1.ID)
	rawExec(t, s.Schema(), `UPDATE jobs SET due_at = due_at - interval '1 hour' WHERE id = $1`, b2.ID)
	// missing: a job without a line.
	insert("c", base)
	rawExec(t, s.Schema(), `DELETE FROM lines WHERE key = 'c'`)
	// finished head: with a next job, and without.
	d1 := insert("d", base)
	insert("d", base.Add(time.Millisecond))
	e1 := insert("e", base)
	rawExec(t, s.Schema(), `UPDATE jobs SET state = 4, finished_at = now() WHERE id = ANY($1)`, []int64{d1.ID, e1.ID})

	rep, err := s.RepairLines(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := (postgres.LineRepair{Unblocked: 1, Moved: 1, Created: 1, Advanced: 2}); rep != want {
		t.Errorf("RepairLines = %+v, want %+v", rep, want)
	}
	if rep, err := s.RepairLines(t.Context()); err != nil || rep.Total() != 0 {
		t.Errorf("RepairLines again = %+v, %v; want nothing to repair", rep, err)
	}
	if got, err := s.Get(t.Context(), b2.ID); err != nil || got.DueAt.Before(running.DueAt) {
		t.Errorf("Get(b2) = %+v, %v; want due behind the running head (%v)", got, err, running.DueAt)
	}
	if _, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: []store.FinishParams{{ID: running.ID,
		Owner: "a", LeaseToken: running.LeaseToken, Outcome: store.OutcomeCompleted}}}); err != nil {
		t.Fatal(err)
	}
	checkLines(t, s.Schema())
	drain(t, s, 7)
}
