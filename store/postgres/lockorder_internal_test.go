package postgres

import (
	"cmp"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// TestRenewAndFinishLockInIDOrder: a lease renewal and a finish take their
// job row locks in id order, whatever order the outcomes come in. A node
// renews while its store loop finishes, so the two meet on the same rows:
// when the finish locked in outcome order, they deadlocked, and each hit
// cost a second (deadlock_timeout) before PostgreSQL broke it. Here
// another transaction holds the lowest job: a writer that locks in id
// order waits there holding nothing, so every other job stays free.
func TestRenewAndFinishLockInIDOrder(t *testing.T) {
	u := pgtest.SchemaURL(t)
	s, err := Open(t.Context(), u, Options{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	conn := func() *pgx.Conn {
		t.Helper()
		c, err := pgx.Connect(t.Context(), s.connCfg.ConnString())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	blocker, observer := conn(), conn()
	// Enough other rows that the planner reaches jobs by primary key, as
	// it does in production, rather than by reading the whole table.
	now := time.Now()
	filler := make([]store.InsertParams, 5000)
	for i := range filler {
		filler[i] = store.InsertParams{Kind: "filler", MaxAttempts: 1}
	}
	if _, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: now, Jobs: filler, IdempotencySince: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name  string
		write func(jobs []*store.Job) error
	}{
		{"Renew", func([]*store.Job) error {
			return s.RenewLeases(t.Context(), "a", time.Now().Add(time.Hour))
		}},
		{"Finish", func(jobs []*store.Job) error {
			var fs []store.FinishParams
			for _, j := range slices.Backward(jobs) { // highest id first
				fs = append(fs, store.FinishParams{ID: j.ID, Owner: "a", LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted})
			}
			res, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: fs})
			for _, r := range res {
				if r.Fenced {
					t.Errorf("job %d fenced", r.ID)
				}
			}
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			// The first job (lowest id) is due a minute later, so it is
			// claimed last, with the later lease end: by lease end (the
			// running-jobs index) and by row position (new row versions go
			// in claim order) it comes last, by id first.
			ins := []store.InsertParams{{Kind: "k", MaxAttempts: 1, RunAt: now.Add(time.Minute)}}
			for range 4 {
				ins = append(ins, store.InsertParams{Kind: "k", MaxAttempts: 1})
			}
			if _, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: now, Jobs: ins, IdempotencySince: now.Add(-time.Hour)}); err != nil {
				t.Fatal(err)
			}
			var jobs []*store.Job
			for _, at := range []time.Time{now, now.Add(2 * time.Minute)} {
				got, err := s.Claim(t.Context(), store.ClaimParams{Now: at, Owner: "a", LeaseUntil: at.Add(time.Hour),
					Limits: []store.KindLimit{{Kind: "k", Max: 5}}, Max: 5})
				if err != nil {
					t.Fatal(err)
				}
				jobs = append(jobs, got...)
			}
			if len(jobs) != 5 {
				t.Fatalf("claimed %d jobs, want 5", len(jobs))
			}
			slices.SortFunc(jobs, func(a, b *store.Job) int { return cmp.Compare(a.ID, b.ID) })
			ids := make([]int64, len(jobs))
			for i, j := range jobs {
				ids[i] = j.ID
			}

			tx, err := blocker.Begin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(context.Background()) }()
			if _, err := tx.Exec(t.Context(), s.q(`SELECT 1 FROM _s.jobs WHERE id = $1 FOR UPDATE`), ids[0]); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- tt.write(jobs) }()

			// Wait until the writer waits for the blocker's row.
			deadline := time.Now().Add(10 * time.Second)
			for {
				var waiting int
				if err := observer.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
					WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`, s.schema).Scan(&waiting); err != nil {
					t.Fatal(err)
				}
				if waiting > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the writer never waited for the blocked row")
				}
				time.Sleep(20 * time.Millisecond)
			}
			rows, err := observer.Query(t.Context(), s.q(`SELECT id FROM _s.jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED`), ids[1:])
			if err != nil {
				t.Fatal(err)
			}
			free, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(free, ids[1:]) {
				t.Errorf("while waiting for job %d the writer holds jobs %v locked; want none (locks in id order)", ids[0],
					slices.DeleteFunc(slices.Clone(ids[1:]), func(id int64) bool { return slices.Contains(free, id) }))
			}
			if err := tx.Rollback(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}
