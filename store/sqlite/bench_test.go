package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// BenchmarkOneKeyLine walks one long line whose jobs were all enqueued in
// one batch (so they share due_at): each advance must find the next job
// directly, not scan past the finished ones.
func BenchmarkOneKeyLine(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, b.TempDir()+"/herald.db", Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	}()
	now := time.Now()
	jobs := make([]store.InsertParams, b.N)
	for i := range jobs {
		jobs[i] = store.InsertParams{Kind: "k", Key: "one", Payload: json.RawMessage(`{}`), MaxAttempts: 1}
	}
	if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: jobs, Now: now}); err != nil {
		b.Fatal(err)
	}
	claim := store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Hour), Limits: []store.KindLimit{{Kind: "k", Max: 1}}, Max: 1}
	b.ResetTimer()
	got, err := s.Claim(ctx, claim)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		if len(got) != 1 {
			b.Fatalf("step %d: claimed %d jobs", i, len(got))
		}
		res, err := s.Exchange(ctx, store.ExchangeParams{Now: now,
			Finishes: []store.FinishParams{{ID: got[0].ID, Owner: "o", Outcome: store.OutcomeCompleted}},
			Claim:    &claim})
		if err != nil {
			b.Fatal(err)
		}
		got = res.Claimed
	}
	_ = fmt.Sprint()
}
