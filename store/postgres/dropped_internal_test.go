package postgres

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// A cycle that finishes and claims in one statement, whose connection the
// server ends while the statement runs (a restart, a failover, an
// operator's pg_terminate_backend), fails cleanly and the next cycle
// succeeds on a new connection. It once crashed the process: the
// statement's result handler read the column list of rows that carried
// only the connection's error.
func TestFinishClaimOnDroppedConnection(t *testing.T) {
	t.Parallel()
	app := "herald-dropped-" + pgtest.NewSchemaName()
	s, err := Open(t.Context(), pgtest.SchemaURL(t)+"&application_name="+app, Options{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	now := time.Now()
	ins, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: now, Jobs: []store.InsertParams{
		{Kind: "k", Key: "a", MaxAttempts: 3}, {Kind: "k", Key: "a", MaxAttempts: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	claim := func() *store.ClaimParams {
		return &store.ClaimParams{Now: now, Owner: "n", LeaseUntil: now.Add(time.Hour),
			Limits: []store.KindLimit{{Kind: "k", Max: 5}}, Max: 5}
	}
	got, err := s.Claim(t.Context(), *claim())
	if err != nil || len(got) != 1 || got[0].ID != ins[0].Job.ID {
		t.Fatalf("claim = %v, %v; want the first job", got, err)
	}

	// Hold the finished job's row, so the cycle's combined statement waits
	// for it after the batch's first statements have answered; then end
	// the store's connection while it waits.
	admin, err := pgx.Connect(t.Context(), pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(t.Context()) //nolint:errcheck // test connection
	tx, err := admin.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context()) //nolint:errcheck // only releases the row
	if _, err := tx.Exec(t.Context(), s.q(`SELECT 1 FROM _s.jobs WHERE id = $1 FOR UPDATE`), got[0].ID); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Exchange(t.Context(), store.ExchangeParams{Now: now, Claim: claim(),
			Finishes: []store.FinishParams{{ID: got[0].ID, Owner: "n", LeaseToken: got[0].LeaseToken, Outcome: store.OutcomeCompleted}}})
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := admin.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = $1 AND wait_event_type = 'Lock'`, app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the cycle never waited for the held row")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := <-done; err == nil {
		t.Fatal("the cycle whose connection was terminated succeeded")
	} else {
		t.Logf("cycle on a terminated connection: %v", err)
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The store carries on with new connections.
	res, err := s.Exchange(t.Context(), store.ExchangeParams{Now: now, Claim: claim(),
		Finishes: []store.FinishParams{{ID: got[0].ID, Owner: "n", LeaseToken: got[0].LeaseToken, Outcome: store.OutcomeCompleted}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Finished) != 1 || res.Finished[0].Fenced || len(res.Claimed) != 1 || res.Claimed[0].ID != ins[1].Job.ID {
		t.Fatalf("exchange = finished %+v, claimed %v; want the first completed and the second claimed", res.Finished, res.Claimed)
	}
}
