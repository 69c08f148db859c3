package sqlite

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// An exchange whose COMMIT fails after all its statements ran (finishes,
// a hand-off, a claim, an insert) must change nothing: not the database,
// and not the in-memory claims. Otherwise a claim could stay recorded with
// no worker (its key running, silent until its lease ends), or a finished
// job could be claimed again. The failure is a deferred foreign-key
// violation, which SQLite reports only at COMMIT.
func TestExchangeCommitFailureChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	p := func(key string) store.InsertParams {
		return store.InsertParams{Kind: "k", Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 3}
	}
	ins, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: []store.InsertParams{p("acct"), p("acct"), p("other")}, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := ins[0].Job.ID, ins[1].Job.ID, ins[2].Job.ID
	claim := &store.ClaimParams{Now: now, Owner: "n1", LeaseUntil: now.Add(time.Minute),
		Limits: []store.KindLimit{{Kind: "k", Max: 10}}, Max: 10}
	got, err := s.Claim(ctx, *claim)
	if err != nil || len(got) != 2 {
		t.Fatalf("claim = %v, %v; want jobs %d and %d", got, err, a, c)
	}
	tokens := map[int64]int64{}
	for _, j := range got {
		tokens[j.ID] = j.LeaseToken
	}

	for _, q := range []string{
		`PRAGMA foreign_keys = ON`, // the writer has one connection: it stays on
		`CREATE TABLE fault_parent (id INTEGER PRIMARY KEY)`,
		`CREATE TABLE fault_child (p INTEGER REFERENCES fault_parent (id) DEFERRABLE INITIALLY DEFERRED)`,
		`CREATE TRIGGER fault AFTER UPDATE ON herald_jobs BEGIN INSERT INTO fault_child VALUES (1); END`,
	} {
		if _, err := s.writer.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	later := now.Add(time.Second)
	claim2 := &store.ClaimParams{Now: later, Owner: "n1", LeaseUntil: later.Add(time.Minute),
		Limits: []store.KindLimit{{Kind: "k", Max: 10}}, Max: 10}
	cycle := store.ExchangeParams{Now: later, Claim: claim2, Inserts: []store.InsertParams{p("acct"), p("")},
		Finishes: []store.FinishParams{
			{ID: a, Owner: "n1", LeaseToken: tokens[a], Outcome: store.OutcomeCompleted},
			{ID: c, Owner: "n1", LeaseToken: tokens[c], Outcome: store.OutcomeRetry, RetryAt: later, Error: "boom"},
		}}
	if _, err := s.Exchange(ctx, cycle); err == nil || !strings.Contains(err.Error(), "FOREIGN KEY") {
		t.Fatalf("Exchange with a failing COMMIT = %v, want the foreign key error", err)
	}

	// Nothing happened: a and c still run under their tokens, b waits,
	// nothing new is claimed or stored.
	if n := s.claims.len(); n != 2 {
		t.Errorf("%d claims after the failed commit, want 2", n)
	}
	for id, token := range tokens {
		if cl, ok := s.claims.get(id); !ok || cl.token != token || cl.attempt != 1 {
			t.Errorf("claim of job %d after the failed commit = %+v, %v; want token %d, attempt 1", id, cl, ok, token)
		}
	}
	if j, err := s.Get(ctx, b); err != nil || j.State != store.StateAvailable || j.Head {
		t.Errorf("job %d = %+v, %v; want available behind the running head", b, j, err)
	}
	var jobs, blocked int
	if err := s.writer.QueryRowContext(ctx, `SELECT count(*) FROM herald_jobs`).Scan(&jobs); err != nil || jobs != 3 {
		t.Errorf("%d jobs stored (%v), want 3", jobs, err)
	}
	if err := s.writer.QueryRowContext(ctx, `SELECT count(*) FROM herald_lines WHERE blocked = 2`).Scan(&blocked); err != nil || blocked != 2 {
		t.Errorf("%d lines marked running (%v), want 2", blocked, err)
	}

	// The engine retries the outcomes; once the store writes again, the
	// cycle goes through as if the failure never happened.
	if _, err := s.writer.ExecContext(ctx, `DROP TRIGGER fault`); err != nil {
		t.Fatal(err)
	}
	res, err := s.Exchange(ctx, cycle)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range res.Finished {
		if f.Fenced {
			t.Errorf("outcome %d (job %d) fenced on retry", i, f.ID)
		}
	}
	var claimed []int64
	for _, j := range res.Claimed {
		claimed = append(claimed, j.ID)
	}
	// b by hand-off; c again (retry due now); the new unordered job.
	if len(claimed) != 3 || claimed[0] != b {
		t.Errorf("retried cycle claimed %v, want %d handed off, then %d and the new unordered job", claimed, b, c)
	}
	if j, err := s.Get(ctx, a); err != nil || j.State != store.StateCompleted || j.Attempt != 1 {
		t.Errorf("job %d = %+v, %v; want completed after 1 attempt", a, j, err)
	}
	if j, err := s.Get(ctx, c); err != nil || j.State != store.StateRunning || j.Attempt != 2 || len(j.Errors) != 1 {
		t.Errorf("job %d = %+v, %v; want running attempt 2 with 1 error", c, j, err)
	}
}
