package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// Newcomers whose due time is earlier than their line's waiting head
// (a node whose clock, read before the key's lock, is behind) take the
// head's place while other nodes claim and complete: a claim whose
// snapshot predates a newcomer's commit must not mark the line running
// without taking its head, and no job may be left behind its line. After
// the workers stop nothing is running, so every line must be ready, and
// a drain must complete every job.
func TestEarlierNewcomersRaceClaims(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	nodes := []*postgres.Store{openURL(t, u), openURL(t, u), openURL(t, u)}
	const keys = 4
	var (
		wg       sync.WaitGroup
		inserted atomic.Int64
		stop     atomic.Bool
		errs     = make(chan error, 16)
		tick     atomic.Int64
		base     = time.Now()
	)
	// Each insert is due a little earlier than every insert before it.
	earlier := func() time.Time { return base.Add(-time.Duration(tick.Add(1)) * time.Microsecond * 10) }
	deadline := time.Now().Add(4 * time.Second)
	wg.Go(func() { repairWhile(t, nodes[2], deadline, errs) })
	for n := range 2 {
		s := nodes[n]
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				ps := []store.InsertParams{{Kind: "k", Key: fmt.Sprintf("key-%d", i%keys), Payload: []byte(`{}`), MaxAttempts: 3}}
				if _, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: earlier(), Jobs: ps}); err != nil {
					errs <- fmt.Errorf("insert: %w", err)
					return
				}
				inserted.Add(1)
			}
		})
	}
	for n := range 4 {
		s := nodes[n%len(nodes)]
		owner := fmt.Sprintf("claimer-%d", n)
		wg.Go(func() {
			for !stop.Load() {
				now := time.Now()
				jobs, err := s.Claim(t.Context(), store.ClaimParams{Now: now, Owner: owner, LeaseUntil: now.Add(time.Hour),
					Limits: []store.KindLimit{{Kind: "k", Max: keys}}, Max: keys})
				if err != nil {
					errs <- fmt.Errorf("claim: %w", err)
					return
				}
				fs := make([]store.FinishParams, len(jobs))
				for i, j := range jobs {
					fs[i] = store.FinishParams{ID: j.ID, Owner: owner, LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}
				}
				if len(fs) > 0 {
					res, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: fs})
					if err == nil {
						err = noneFenced(res)
					}
					if err != nil {
						errs <- fmt.Errorf("finish: %w", err)
						return
					}
				}
			}
		})
	}
	time.Sleep(time.Until(deadline))
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkLines(t, nodes[0].Schema())
	// Drain: every job must run.
	drainAll(t, nodes[0], 100, 10000)
	st, err := nodes[1].Stats(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.ByKindState["k"][store.StateCompleted], inserted.Load(); got != want || len(st.ByKindState["k"]) != 1 {
		t.Errorf("after the drain, jobs by state %v; want all %d completed", st.ByKindState["k"], want)
	}
	t.Logf("%d jobs", inserted.Load())
}

// checkLines fails t for every line of schema that is marked
// running although its head is not, and for every job still in line
// that stands ahead of its line's head (no advance would reach it). Call
// it when no job is running.
func checkLines(t *testing.T, schema string) {
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
	rows, err := conn.Query(ctx, `SELECT l.key, l.head_id, l.blocked, j.state FROM lines l JOIN jobs j ON j.id = l.head_id
		WHERE (l.blocked = 2) <> (j.state = 2)`)
	if err != nil {
		t.Fatal(err)
	}
	var (
		key            string
		head           int64
		blocked, state int16
	)
	_, err = pgx.ForEachRow(rows, []any{&key, &head, &blocked, &state}, func() error {
		t.Errorf("line %s: head %d has state %d but the line says blocked %d", key, head, state, blocked)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var behind int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM jobs j JOIN lines l ON l.key = j.key
		WHERE j.key <> '' AND j.state < 4 AND (j.due_at, j.id) < (l.due_at, l.head_id)`).Scan(&behind); err != nil {
		t.Fatal(err)
	}
	if behind > 0 {
		t.Errorf("%d jobs stand ahead of their line's head", behind)
	}
}

// Nodes run exchanges as engines do: each inserts a few jobs (due at a
// time read a little before, as a node reads its clock before waiting for
// the keys' locks), records the outcomes of its previous claim
// (completed, retried or released) and claims again, all in one batch.
// When they stop and their last claims are finished, every line must be
// consistent and a drain must complete every job.
func TestMixedExchangesKeepLines(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	nodes := []*postgres.Store{openURL(t, u), openURL(t, u), openURL(t, u)}
	const keys = 6
	var (
		wg       sync.WaitGroup
		inserted atomic.Int64
		errs     = make(chan error, 16)
	)
	deadline := time.Now().Add(4 * time.Second)
	wg.Go(func() { repairWhile(t, nodes[2], deadline, errs) })
	for n := range 6 {
		s := nodes[n%len(nodes)]
		owner := fmt.Sprintf("node-%d", n)
		wg.Go(func() {
			r := rand.New(rand.NewPCG(rand.Uint64(), 7))
			var held []*store.Job
			finishes := func(final bool) []store.FinishParams {
				fs := make([]store.FinishParams, len(held))
				for i, j := range held {
					fs[i] = store.FinishParams{ID: j.ID, Owner: owner, LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}
					switch x := r.IntN(20); {
					case final:
					case x < 3 && j.Attempt < 3:
						fs[i].Outcome, fs[i].Error, fs[i].RetryAt = store.OutcomeRetry, "x", time.Now().Add(time.Millisecond)
					case x == 3:
						fs[i].Outcome = store.OutcomeRelease
					}
				}
				return fs
			}
			for time.Now().Before(deadline) {
				now := time.Now().Add(-time.Duration(r.IntN(5000)) * time.Microsecond)
				ps := make([]store.InsertParams, r.IntN(3))
				for i := range ps {
					ps[i] = store.InsertParams{Kind: "k", Key: fmt.Sprintf("key-%d", r.IntN(keys)), Payload: []byte(`{}`), MaxAttempts: 5}
				}
				claimAt := time.Now()
				res, err := s.Exchange(t.Context(), store.ExchangeParams{Now: now, Inserts: ps, Finishes: finishes(false),
					Claim: &store.ClaimParams{Now: claimAt, Owner: owner, LeaseUntil: claimAt.Add(time.Hour),
						Limits: []store.KindLimit{{Kind: "k", Max: 3}}, Max: 3}})
				if err != nil {
					errs <- fmt.Errorf("%s: exchange: %w", owner, err)
					return
				}
				inserted.Add(int64(len(ps)))
				if err := noneFenced(res.Finished); err != nil {
					errs <- fmt.Errorf("%s: %w", owner, err)
					return
				}
				held = res.Claimed
			}
			if len(held) > 0 {
				res, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: finishes(true)})
				if err == nil {
					err = noneFenced(res)
				}
				if err != nil {
					errs <- fmt.Errorf("%s: finish: %w", owner, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkLines(t, nodes[0].Schema())
	drain(t, nodes[0], inserted.Load())
}

// drain claims and completes jobs of kind k until none is ready (retries
// are due within milliseconds), then wants all want jobs completed.
func drain(t *testing.T, s *postgres.Store, want int64) {
	t.Helper()
	idle := 0
	for spins := 0; idle < 20; spins++ {
		if spins > 10000 {
			t.Fatal("could not drain the store")
		}
		now := time.Now()
		jobs, err := s.Claim(t.Context(), store.ClaimParams{Now: now, Owner: "drain", LeaseUntil: now.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: "k", Max: 100}}, Max: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) == 0 {
			idle++
			time.Sleep(5 * time.Millisecond)
			continue
		}
		idle = 0
		fs := make([]store.FinishParams, len(jobs))
		for i, j := range jobs {
			fs[i] = store.FinishParams{ID: j.ID, Owner: "drain", LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}
		}
		if _, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: fs}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.Stats(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := st.ByKindState["k"][store.StateCompleted]; got != want || len(st.ByKindState["k"]) != 1 {
		t.Errorf("after the drain, jobs by state %v; want all %d completed", st.ByKindState["k"], want)
	}
	t.Logf("%d jobs", want)
}

// repairWhile runs RepairLines until deadline while other nodes write:
// the writers keep the lines' invariants, so it must find nothing to
// repair (no false alarms from changes it sees half-way).
func repairWhile(t *testing.T, s *postgres.Store, deadline time.Time, errs chan<- error) {
	t.Helper()
	runs := 0
	for ; time.Now().Before(deadline); runs++ {
		rep, err := s.RepairLines(t.Context())
		if err != nil {
			errs <- fmt.Errorf("repair: %w", err)
			return
		}
		if rep.Total() != 0 {
			errs <- fmt.Errorf("repair under load changed lines: %+v", rep)
			return
		}
	}
	if runs == 0 {
		errs <- errors.New("repair never ran")
	}
}

// noneFenced reports a finish that was fenced off. Leases here outlast the
// test and nothing rescues, so a fenced finish means another claim took
// the job while it was held: a line left ready while its head ran.
func noneFenced(res []store.FinishResult) error {
	for _, r := range res {
		if r.Fenced {
			return fmt.Errorf("finish of job %d fenced: the job was claimed again while held", r.ID)
		}
	}
	return nil
}
