package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
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

// A busy key must not keep its worker slot while another job of its kind
// has waited longer, whether that is another key's head or an unordered
// job: hand-off yields to the oldest waiting job.
func TestHandOffYieldsToOlderWaitingJob(t *testing.T) {
	t.Parallel()
	for _, waiting := range []string{"waiting", ""} {
		t.Run(fmt.Sprintf("key %q", waiting), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := openTest(t)
			t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			p := func(key string) store.InsertParams {
				return store.InsertParams{Kind: "k", Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 3}
			}
			for i, key := range []string{"busy", waiting, "busy"} {
				if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: []store.InsertParams{p(key)}, Now: t0.Add(time.Duration(i) * time.Second)}); err != nil {
					t.Fatal(err)
				}
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
			if len(res.Claimed) != 1 || res.Claimed[0].Key != waiting {
				t.Fatalf("one free slot went to %v; want the job of key %q, which waited longer", res.Claimed, waiting)
			}
		})
	}
}

// A key's first job is claimed in the exchange that inserts it when it may
// run now, a slot of its kind is free and no head of its kind has waited
// longer; otherwise its line waits in the ready index as before.
func TestInsertClaimsNewLine(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	job := func(key string) store.InsertParams {
		return store.InsertParams{Kind: "k", Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 3}
	}
	slots := func(perKind, total int) *store.ClaimParams {
		return &store.ClaimParams{Now: t0.Add(time.Second), Owner: "n1", LeaseUntil: t0.Add(time.Hour),
			Limits: []store.KindLimit{{Kind: "k", Max: perKind}}, Max: total}
	}
	later := job("b")
	later.RunAt = t0.Add(time.Hour)
	tests := []struct {
		name    string
		before  []store.InsertParams // inserted (not claimed) before the exchange
		inserts []store.InsertParams
		claim   *store.ClaimParams
		want    []string // keys claimed by the exchange, in order
	}{
		{name: "idle keys start at once", inserts: []store.InsertParams{job("a"), job("a"), job("b")},
			claim: slots(10, 10), want: []string{"a", "b"}},
		{name: "an older waiting head goes first", before: []store.InsertParams{job("old")},
			inserts: []store.InsertParams{job("new")}, claim: slots(1, 1), want: []string{"old"}},
		{name: "no slot of the kind", inserts: []store.InsertParams{job("a")}, claim: slots(0, 10)},
		{name: "no slot at all", inserts: []store.InsertParams{job("a")}, claim: slots(10, 0)},
		{name: "a scheduled job waits", inserts: []store.InsertParams{later}, claim: slots(10, 10)},
		{name: "the oldest newcomer gets the last slot", inserts: []store.InsertParams{job("x"), job("y"), job("z")},
			claim: slots(2, 2), want: []string{"x", "y"}},
		{name: "an older unordered job goes first", before: []store.InsertParams{job("")},
			inserts: []store.InsertParams{job("new")}, claim: slots(1, 1), want: []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := openTest(t)
			if len(tt.before) > 0 {
				if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: tt.before, Now: t0}); err != nil {
					t.Fatal(err)
				}
			}
			res, err := s.Exchange(ctx, store.ExchangeParams{Now: tt.claim.Now, Inserts: tt.inserts, Claim: tt.claim})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, j := range res.Claimed {
				got = append(got, j.Key)
				if j.State != store.StateRunning || j.Attempt != 1 || !j.Head || j.LeaseToken == 0 {
					t.Errorf("claimed job %d = %+v; want running attempt 1, head, with a lease token", j.ID, j)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("claimed keys %v, want %v", got, tt.want)
			}
			// Every claimed job shows running; every other due newcomer
			// stays claimable by the next exchange, each key once.
			for _, j := range res.Claimed {
				if j.Key == "" {
					continue // unordered: no line
				}
				line, err := s.Line(ctx, j.Key)
				if err != nil || line.Head == nil || line.Head.ID != j.ID || line.Head.State != store.StateRunning {
					t.Errorf("Line(%q) = %+v, %v; want head %d running", j.Key, line, err, j.ID)
				}
			}
			next := *slots(10, 10)
			again, err := s.Claim(ctx, next)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, j := range res.Claimed {
				seen[j.Key] = true
			}
			for _, j := range again {
				if seen[j.Key] {
					t.Errorf("key %q claimed again while its job %d runs", j.Key, j.ID)
				}
				seen[j.Key] = true
			}
			for _, in := range append(slices.Clone(tt.before), tt.inserts...) {
				if in.RunAt.IsZero() && !seen[in.Key] {
					t.Errorf("due key %q was never claimed", in.Key)
				}
			}
		})
	}
}

// The claim on insert is the cheap path: a new line is written running
// once, never written ready and then marked (two writes, and a ready-index
// entry added and removed).
func TestInsertClaimWritesLineOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	// A temporary trigger on the writer's one connection counts line updates.
	for _, q := range []string{
		`CREATE TEMP TABLE line_updates (kh INTEGER)`,
		`CREATE TEMP TRIGGER count_line_updates AFTER UPDATE ON main.herald_lines
			BEGIN INSERT INTO line_updates VALUES (new.kh); END`,
	} {
		if _, err := s.writer.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var jobs []store.InsertParams
	for _, key := range []string{"a", "b", "c"} {
		jobs = append(jobs, store.InsertParams{Kind: "k", Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 3})
	}
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: now, Inserts: jobs, Claim: &store.ClaimParams{
		Now: now, Owner: "n1", LeaseUntil: now.Add(time.Hour), Limits: []store.KindLimit{{Kind: "k", Max: 10}}, Max: 10}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Claimed) != 3 {
		t.Fatalf("claimed %d jobs, want 3", len(res.Claimed))
	}
	var updates int
	if err := s.writer.QueryRowContext(ctx, `SELECT count(*) FROM line_updates`).Scan(&updates); err != nil {
		t.Fatal(err)
	}
	if updates != 0 {
		t.Errorf("the exchange updated new lines %d times; want them written running once", updates)
	}
}
