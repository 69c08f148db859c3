// Package storetest is the conformance suite every store.Driver runs: one
// body of tests for the semantics documented in package store, so SQLite
// and PostgreSQL cannot drift apart.
//
// A driver's test file calls Exercise with a factory that returns a fresh,
// empty, isolated store and registers its own cleanup:
//
//	func TestConformance(t *testing.T) {
//		storetest.Exercise(t, func(t *testing.T) store.Driver { return openTestStore(t) })
//	}
//
// Every test passes explicit times (a fixed base in 2030 plus offsets), so
// results do not depend on the wall clock.
package storetest

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// Exercise runs the whole suite against the driver newDriver returns. Each
// subtest calls newDriver once for a store of its own and runs in parallel
// with the others.
func Exercise(t *testing.T, newDriver func(t *testing.T) store.Driver) {
	t.Helper()
	setup := func(t *testing.T) *bundle {
		t.Helper()
		d := newDriver(t)
		if d == nil {
			t.Fatal("newDriver returned nil")
		}
		return &bundle{t: t, d: newTokenDriver(d), raw: d}
	}
	groups := []struct {
		name string
		run  func(t *testing.T, setup func(t *testing.T) *bundle)
	}{
		{"InsertMany", exerciseInsertMany},
		{"Lines", exerciseLines},
		{"Claim", exerciseClaim},
		{"FinishMany", exerciseFinishMany},
		{"Exchange", exerciseExchange},
		{"FIFO", exerciseFIFO},
		{"Leases", exerciseLeases},
		{"NextRunAt", exerciseNextRunAt},
		{"Get", exerciseGet},
		{"List", exerciseList},
		{"Line", exerciseLine},
		{"Retry", exerciseRetry},
		{"Cancel", exerciseCancel},
		{"Idempotency", exerciseIdempotency},
		{"Prune", exercisePrune},
		{"Stats", exerciseStats},
		{"Lifecycle", exerciseLifecycle},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			t.Parallel()
			g.run(t, setup)
		})
	}
}

// base is the suite's fixed "now"; tests add offsets to it.
var base = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// at is base plus d.
func at(d time.Duration) time.Time { return base.Add(d) }

const (
	kindEmail   = "email"
	kindWebhook = "webhook"
	owner1      = "node-1"
	owner2      = "node-2"
)

// bundle is what a test gets from setup: its own driver plus helpers that
// fail the test on unexpected errors.
type bundle struct {
	t *testing.T
	// d fills in lease tokens of finishes that carry none (tokenDriver).
	d store.Driver
	// raw is the driver under test, unwrapped.
	raw store.Driver
}

// with is b for a subtest t of b's test.
func (b *bundle) with(t *testing.T) *bundle {
	t.Helper()
	return &bundle{t: t, d: b.d, raw: b.raw}
}

// params is an ordinary job of kind on key, due now.
func params(kind, key string) store.InsertParams {
	return store.InsertParams{Kind: kind, Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 3}
}

// scheduled is params with a RunAt.
func scheduled(kind, key string, runAt time.Time) store.InsertParams {
	p := params(kind, key)
	p.RunAt = runAt
	return p
}

// insert stores jobs as one batch at now and returns them in order. None of
// them may be an idempotent match.
func (b *bundle) insert(now time.Time, jobs ...store.InsertParams) []*store.Job {
	b.t.Helper()
	res, err := b.d.InsertMany(b.t.Context(), store.InsertManyParams{Jobs: jobs, Now: now, IdempotencySince: now.Add(-time.Hour)})
	if err != nil {
		b.t.Fatalf("InsertMany: %v", err)
	}
	if len(res) != len(jobs) {
		b.t.Fatalf("InsertMany returned %d results for %d jobs", len(res), len(jobs))
	}
	out := make([]*store.Job, len(res))
	for i, r := range res {
		if r.Job == nil {
			b.t.Fatalf("InsertMany result %d has no job", i)
		}
		if r.Existing {
			b.t.Fatalf("InsertMany result %d unexpectedly matched existing job %d", i, r.Job.ID)
		}
		out[i] = r.Job
	}
	return out
}

// insertOne stores one job at now.
func (b *bundle) insertOne(now time.Time, p store.InsertParams) *store.Job {
	b.t.Helper()
	return b.insert(now, p)[0]
}

// claimWith runs Claim with p as given.
func (b *bundle) claimWith(p store.ClaimParams) []*store.Job {
	b.t.Helper()
	jobs, err := b.d.Claim(b.t.Context(), p)
	if err != nil {
		b.t.Fatalf("Claim: %v", err)
	}
	return jobs
}

// claim claims up to n jobs of the suite's kinds as owner1, leased for a
// minute.
func (b *bundle) claim(now time.Time, n int) []*store.Job {
	b.t.Helper()
	return b.claimAs(now, owner1, n)
}

func (b *bundle) claimAs(now time.Time, owner string, n int) []*store.Job {
	b.t.Helper()
	return b.claimWith(store.ClaimParams{
		Now:        now,
		Owner:      owner,
		LeaseUntil: now.Add(time.Minute),
		Limits:     []store.KindLimit{{Kind: kindEmail, Max: n}, {Kind: kindWebhook, Max: n}},
		Max:        n,
	})
}

// claimOne claims exactly one job and fails otherwise.
func (b *bundle) claimOne(now time.Time) *store.Job {
	b.t.Helper()
	jobs := b.claim(now, 100)
	if len(jobs) != 1 {
		b.t.Fatalf("Claim at %s: got jobs %v, want exactly one", now.Format(time.TimeOnly), ids(jobs))
	}
	return jobs[0]
}

// claimNone fails unless nothing is claimable at now.
func (b *bundle) claimNone(now time.Time) {
	b.t.Helper()
	if jobs := b.claim(now, 100); len(jobs) != 0 {
		b.t.Fatalf("Claim at %s: got jobs %v, want none", now.Format(time.TimeOnly), ids(jobs))
	}
}

// finish runs FinishMany and checks that results line up with fs.
func (b *bundle) finish(now time.Time, fs ...store.FinishParams) []store.FinishResult {
	b.t.Helper()
	res, err := b.d.FinishMany(b.t.Context(), store.FinishManyParams{Now: now, Finishes: fs})
	if err != nil {
		b.t.Fatalf("FinishMany: %v", err)
	}
	if len(res) != len(fs) {
		b.t.Fatalf("FinishMany returned %d results for %d finishes", len(res), len(fs))
	}
	for i, f := range fs {
		if res[i].ID != f.ID {
			b.t.Fatalf("FinishMany result %d is for job %d, want %d", i, res[i].ID, f.ID)
		}
	}
	return res
}

// finishOK finishes one job under its lease owner and fails if fenced.
func (b *bundle) finishOK(now time.Time, f store.FinishParams) {
	b.t.Helper()
	if res := b.finish(now, f); res[0].Fenced {
		b.t.Fatalf("FinishMany of job %d (outcome %d) was fenced", f.ID, f.Outcome)
	}
}

// complete finishes claimed jobs successfully under their lease owners.
func (b *bundle) complete(now time.Time, jobs ...*store.Job) {
	b.t.Helper()
	fs := make([]store.FinishParams, len(jobs))
	for i, j := range jobs {
		fs[i] = store.FinishParams{ID: j.ID, Owner: j.LeaseOwner, Outcome: store.OutcomeCompleted}
	}
	for i, r := range b.finish(now, fs...) {
		if r.Fenced {
			b.t.Fatalf("completing job %d was fenced", fs[i].ID)
		}
	}
}

// retry finishes a claimed job with OutcomeRetry.
func (b *bundle) retry(now time.Time, j *store.Job, retryAt time.Time, msg string) {
	b.t.Helper()
	b.finishOK(now, store.FinishParams{ID: j.ID, Owner: j.LeaseOwner, Outcome: store.OutcomeRetry, Error: msg, RetryAt: retryAt})
}

// discard finishes a claimed job with OutcomeDiscard.
func (b *bundle) discard(now time.Time, j *store.Job, blockKey bool) {
	b.t.Helper()
	b.finishOK(now, store.FinishParams{ID: j.ID, Owner: j.LeaseOwner, Outcome: store.OutcomeDiscard, Error: "gave up", BlockKey: blockKey})
}

// get reads a job that must exist.
func (b *bundle) get(id int64) *store.Job {
	b.t.Helper()
	j, err := b.d.Get(b.t.Context(), id)
	if err != nil {
		b.t.Fatalf("Get(%d): %v", id, err)
	}
	if j == nil {
		b.t.Fatalf("Get(%d) returned nil", id)
	}
	return j
}

// stateAt is the job's state as List reports it at now (Get has no notion
// of "now", so a scheduled job's state there depends on the wall clock).
func (b *bundle) stateAt(id int64, now time.Time) store.State {
	b.t.Helper()
	jobs := b.list(store.ListParams{AfterID: id - 1, Limit: 1, Now: now})
	if len(jobs) != 1 || jobs[0].ID != id {
		b.t.Fatalf("List after %d: got %v, want job %d", id-1, ids(jobs), id)
	}
	return jobs[0].State
}

func (b *bundle) list(p store.ListParams) []*store.Job {
	b.t.Helper()
	jobs, err := b.d.List(b.t.Context(), p)
	if err != nil {
		b.t.Fatalf("List(%+v): %v", p, err)
	}
	return jobs
}

func (b *bundle) line(key string) *store.KeyLine {
	b.t.Helper()
	l, err := b.d.Line(b.t.Context(), key)
	if err != nil {
		b.t.Fatalf("Line(%q): %v", key, err)
	}
	return l
}

func (b *bundle) stats(now time.Time) *store.Stats {
	b.t.Helper()
	st, err := b.d.Stats(b.t.Context(), now)
	if err != nil {
		b.t.Fatalf("Stats: %v", err)
	}
	return st
}

// count is how many jobs the store holds (List pages through all of them).
func (b *bundle) count() int {
	b.t.Helper()
	n := 0
	var after int64
	for {
		page := b.list(store.ListParams{AfterID: after, Limit: 500, Now: base})
		if len(page) == 0 {
			return n
		}
		n += len(page)
		after = page[len(page)-1].ID
	}
}

// ids lists jobs' ids in the order given.
func ids(jobs []*store.Job) []int64 {
	out := make([]int64, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

// sortedIDs lists jobs' ids in ascending order.
func sortedIDs(jobs ...*store.Job) []int64 {
	out := ids(jobs)
	slices.Sort(out)
	return out
}

// wantJobs fails unless got holds exactly the jobs of want, in any order.
func wantJobs(t *testing.T, what string, got []*store.Job, want ...*store.Job) {
	t.Helper()
	if g, w := sortedIDs(got...), sortedIDs(want...); !slices.Equal(g, w) {
		t.Errorf("%s: got jobs %v, want %v", what, g, w)
	}
}

// wantState fails unless j is in state s.
func wantState(t *testing.T, j *store.Job, s store.State) {
	t.Helper()
	if j.State != s {
		t.Errorf("job %d: state %q, want %q", j.ID, j.State, s)
	}
}

// wantHead fails unless j's Head flag is head.
func wantHead(t *testing.T, j *store.Job, head bool) {
	t.Helper()
	if j.Head != head {
		t.Errorf("job %d (key %q, state %s): Head = %v, want %v", j.ID, j.Key, j.State, j.Head, head)
	}
}

// wantTime fails unless got equals want (as instants).
func wantTime(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if !got.Equal(want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}
