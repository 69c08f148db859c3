package sqlite

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// A finished head's successor is claimed in the same exchange without a
// line write; if the process stops before that job ends, reopening the file
// must repair the line so the job runs again, in order.
func TestHandOffSurvivesRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "herald.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	jobs := make([]store.InsertParams, 3)
	for i := range jobs {
		jobs[i] = store.InsertParams{Kind: "k", Key: "acct", Payload: json.RawMessage(`{}`), MaxAttempts: 3}
	}
	ins, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: jobs, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	claim := &store.ClaimParams{Now: now, Owner: "n1", LeaseUntil: now.Add(time.Minute),
		Limits: []store.KindLimit{{Kind: "k", Max: 10}}, Max: 10}
	first, err := s.Claim(ctx, *claim)
	if err != nil || len(first) != 1 || first[0].ID != ins[0].Job.ID {
		t.Fatalf("first claim = %v, %v; want job %d", first, err, ins[0].Job.ID)
	}
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: now, Claim: claim,
		Finishes: []store.FinishParams{{ID: first[0].ID, Owner: "n1", LeaseToken: first[0].LeaseToken, Outcome: store.OutcomeCompleted}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Claimed) != 1 || res.Claimed[0].ID != ins[1].Job.ID {
		t.Fatalf("hand-off claimed %v, want job %d", res.Claimed, ins[1].Job.ID)
	}
	line, err := s.Line(ctx, "acct")
	if err != nil || line.Head == nil || line.Head.ID != ins[1].Job.ID || line.Head.State != store.StateRunning {
		t.Fatalf("Line during hand-off = %+v, %v; want head %d running", line, err, ins[1].Job.ID)
	}
	if got, _ := s.Get(ctx, ins[0].Job.ID); got.Head {
		t.Errorf("finished job %d still reported as head", got.ID)
	}
	// "Crash": close without finishing the handed-off job, then reopen.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	again, err := s.Claim(ctx, *claim)
	if err != nil || len(again) != 1 || again[0].ID != ins[1].Job.ID {
		t.Fatalf("after restart claimed %v, %v; want job %d again", again, err, ins[1].Job.ID)
	}
}

// A busy key must not keep its worker slot while another key's head has
// waited longer: hand-off yields to the oldest waiting head.
func TestHandOffYieldsToOlderWaitingHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	p := func(key string) store.InsertParams {
		return store.InsertParams{Kind: "k", Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 3}
	}
	if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: []store.InsertParams{p("busy")}, Now: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: []store.InsertParams{p("waiting")}, Now: t0.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: []store.InsertParams{p("busy")}, Now: t0.Add(2 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	one := &store.ClaimParams{Now: t0.Add(3 * time.Second), Owner: "n1", LeaseUntil: t0.Add(time.Hour),
		Limits: []store.KindLimit{{Kind: "k", Max: 1}}, Max: 1}
	got, err := s.Claim(ctx, *one)
	if err != nil || len(got) != 1 || got[0].Key != "busy" {
		t.Fatalf("first claim = %v, %v", got, err)
	}
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: one.Now, Claim: one,
		Finishes: []store.FinishParams{{ID: got[0].ID, Owner: "n1", LeaseToken: got[0].LeaseToken, Outcome: store.OutcomeCompleted}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Claimed) != 1 || res.Claimed[0].Key != "waiting" {
		t.Fatalf("one free slot went to %v; want the key that waited longer", res.Claimed)
	}
}
