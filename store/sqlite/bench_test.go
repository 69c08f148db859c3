package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// BenchmarkOneKeyLine walks one long line whose jobs were all enqueued in
// one batch (so they share due_at): each advance must find the next job
// directly, not scan past the finished ones.
func BenchmarkOneKeyLine(b *testing.B) {
	ctx := context.Background()
	s := openWith(b, Options{})
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
			Finishes: []store.FinishParams{{ID: got[0].ID, Owner: "o", LeaseToken: got[0].LeaseToken, Outcome: store.OutcomeCompleted}},
			Claim:    &claim})
		if err != nil {
			b.Fatal(err)
		}
		got = res.Claimed
	}
	_ = fmt.Sprint()
}

// BenchmarkExchangeCycle is the engine's steady state under load: each
// cycle inserts a batch over 1,000 keys, completes what the previous cycle
// claimed and claims again, in one transaction. ns/op is per job.
func BenchmarkExchangeCycle(b *testing.B) {
	ctx := context.Background()
	s := openWith(b, Options{})
	const batch = 1000
	inserts := make([]store.InsertParams, batch)
	for i := range inserts {
		inserts[i] = store.InsertParams{Kind: "k", Key: fmt.Sprintf("key-%d", (i*7919)%1000), Payload: json.RawMessage(`{"n":1}`), MaxAttempts: 3}
	}
	claim := func(now time.Time) *store.ClaimParams {
		return &store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: "k", Max: batch}}, Max: batch}
	}
	var running []*store.Job
	b.ResetTimer()
	for done := 0; done < b.N; {
		now := time.Now()
		fs := completions(running)
		n := min(batch, b.N-done)
		res, err := s.Exchange(ctx, store.ExchangeParams{Now: now, Inserts: inserts[:n], Finishes: fs, Claim: claim(now)})
		if err != nil {
			b.Fatal(err)
		}
		done += n
		running = res.Claimed
	}
}

// BenchmarkDrainRandomKeys is the completion path alone, as in `herald bench
// throughput` once enqueueing is done: 200,000 jobs over 1,000 random keys
// are stored first, then each cycle completes up to 500 running jobs (the
// previous cycle's claims and hand-offs) and claims again. Random keys
// spread the lines' heads over a wide window of job ids, so completions
// touch many pages. ns/op is per completed job.
func BenchmarkDrainRandomKeys(b *testing.B) {
	b.Run("memo", func(b *testing.B) { drainRandomKeys(b, Options{}) })
	b.Run("no-memo", func(b *testing.B) { drainRandomKeys(b, Options{LineMemoMiB: -1}) })
}

func drainRandomKeys(b *testing.B, opts Options) {
	b.Helper()
	ctx := context.Background()
	s := openWith(b, opts)
	const (
		total = 200_000
		keys  = 1000
		slots = 500
	)
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	for n := 0; n < total; n += 1000 {
		jobs := make([]store.InsertParams, 1000)
		for i := range jobs {
			jobs[i] = store.InsertParams{Kind: "k", Key: fmt.Sprintf("acct-%d", rng.IntN(keys)), Payload: json.RawMessage(`{"n":1}`), MaxAttempts: 3}
		}
		if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: jobs, Now: now}); err != nil {
			b.Fatal(err)
		}
	}
	claim := func(now time.Time, n int) *store.ClaimParams {
		return &store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Hour),
			Limits: []store.KindLimit{{Kind: "k", Max: n}}, Max: n}
	}
	running, err := s.Claim(ctx, *claim(now, slots))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for done := 0; done < b.N && done < total; {
		fs := completions(running)
		done += len(fs)
		res, err := s.Exchange(ctx, store.ExchangeParams{Now: time.Now(), Finishes: fs, Claim: claim(now, len(fs))})
		if err != nil {
			b.Fatal(err)
		}
		running = res.Claimed
		if len(running) == 0 {
			b.Fatalf("nothing claimed after %d completions", done)
		}
	}
}

// BenchmarkExchangeIdleKeys is single-job enqueueing at a steady rate
// (`herald bench http` without --batch): each cycle inserts 100 jobs whose
// keys have nothing pending, so every job opens its key's line and is
// handed off on the spot, and completes in the next cycle, which drops the
// line again. ns/op is per job.
func BenchmarkExchangeIdleKeys(b *testing.B) {
	ctx := context.Background()
	s := openWith(b, Options{})
	const (
		cycle = 100
		keys  = 1000
	)
	claim := func(now time.Time) *store.ClaimParams {
		return &store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: "k", Max: cycle}}, Max: cycle}
	}
	inserts := make([]store.InsertParams, cycle)
	var running []*store.Job
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(cycle, b.N-done)
		for i := range inserts[:n] {
			inserts[i] = store.InsertParams{Kind: "k", Key: fmt.Sprintf("key-%d", (done+i)%keys), Payload: json.RawMessage(`{"n":1}`), MaxAttempts: 3}
		}
		fs := completions(running)
		now := time.Now()
		res, err := s.Exchange(ctx, store.ExchangeParams{Now: now, Inserts: inserts[:n], Finishes: fs, Claim: claim(now)})
		if err != nil {
			b.Fatal(err)
		}
		done += n
		running = res.Claimed
	}
}

// completions completes every job of running, as owner "o".
func completions(running []*store.Job) []store.FinishParams {
	fs := make([]store.FinishParams, len(running))
	for i, j := range running {
		fs[i] = store.FinishParams{ID: j.ID, Owner: "o", LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}
	}
	return fs
}
