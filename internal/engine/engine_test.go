package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldmq/herald/clock"
	"github.com/heraldmq/herald/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// nopStore satisfies store.Driver for tests that never reach the store.
type nopStore struct{ store.Driver }

func TestBackoff(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		attempt   int
		base, cap time.Duration
		nominal   time.Duration
	}{
		{"FirstUsesBase", 1, time.Second, time.Hour, time.Second},
		{"Doubles", 2, time.Second, time.Hour, 2 * time.Second},
		{"DoublesAgain", 5, time.Second, time.Hour, 16 * time.Second},
		{"Capped", 10, time.Second, 30 * time.Second, 30 * time.Second},
		{"HugeAttemptCapped", 1000, time.Second, time.Hour, time.Hour},
		{"DefaultBase", 1, 0, 0, time.Second},
		{"DefaultCap", 40, time.Second, 0, time.Hour},
		{"AttemptZero", 0, 10 * time.Millisecond, time.Hour, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lo, hi := tt.nominal-tt.nominal/4, tt.nominal+tt.nominal/4
			var sawLow, sawHigh bool
			for range 2000 {
				d := backoff(tt.attempt, tt.base, tt.cap)
				if d < lo || d > hi {
					t.Fatalf("backoff(%d, %s, %s) = %s, want within [%s, %s]", tt.attempt, tt.base, tt.cap, d, lo, hi)
				}
				sawLow = sawLow || d < tt.nominal-tt.nominal/8
				sawHigh = sawHigh || d > tt.nominal+tt.nominal/8
			}
			if !sawLow || !sawHigh {
				t.Errorf("backoff(%d) never spread over its ±25%% jitter (low %v, high %v)", tt.attempt, sawLow, sawHigh)
			}
		})
	}
}

func TestOutcome(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := New(Config{Store: nopStore{}, Clock: clock.NewFake(now), Owner: "me",
		Kinds: map[string]Kind{"k": {Handler: func(context.Context, *store.Job) error { return nil }}}})
	if err != nil {
		t.Fatal(err)
	}
	kind := func(block bool) *kindState {
		return &kindState{name: "k", Kind: Kind{Timeout: time.Second, BackoffBase: time.Minute, BackoffCap: time.Hour, BlockKeyOnDiscard: block}}
	}
	boom := errors.New("boom")

	tests := []struct {
		name      string
		attempt   int
		max       int
		block     bool
		err       error
		cause     error
		want      store.Outcome
		wantMsg   string // substring of FinishParams.Error
		wantRetry time.Duration
		wantBlock bool
	}{
		{"Success", 1, 3, false, nil, nil, store.OutcomeCompleted, "", 0, false},
		{"SuccessDespiteStop", 1, 3, false, nil, errStopping, store.OutcomeCompleted, "", 0, false},
		{"FailureRetries", 1, 3, false, boom, nil, store.OutcomeRetry, "boom", -1, false},
		{"LastAttemptDiscards", 3, 3, false, boom, nil, store.OutcomeDiscard, "boom", 0, false},
		{"LastAttemptBlocksKey", 3, 3, true, boom, nil, store.OutcomeDiscard, "boom", 0, true},
		{"Permanent", 1, 3, false, &PermanentError{Err: boom}, nil, store.OutcomeDiscard, "permanent: boom", 0, false},
		{"WrappedPermanent", 1, 3, false, fmt.Errorf("ctx: %w", &PermanentError{Err: boom}), nil, store.OutcomeDiscard, "boom", 0, false},
		{"RetryAfter", 1, 3, false, &RetryAfterError{Delay: 42 * time.Second, Err: boom}, nil, store.OutcomeRetry, "retry after 42s: boom", 42 * time.Second, false},
		{"RetryAfterOnLastAttemptDiscards", 3, 3, false, &RetryAfterError{Delay: time.Second, Err: boom}, nil, store.OutcomeDiscard, "boom", 0, false},
		{"StopReleases", 3, 3, false, context.Canceled, errStopping, store.OutcomeRelease, "", 0, false},
		{"StopReleasesWhateverTheError", 1, 3, false, &PermanentError{Err: boom}, errStopping, store.OutcomeRelease, "", 0, false},
		{"TimeoutFails", 1, 3, false, context.DeadlineExceeded, errTimeout, store.OutcomeRetry, "handler timeout after 1s", -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			j := &store.Job{ID: 7, Kind: "k", Attempt: tt.attempt, MaxAttempts: tt.max}
			f := e.outcome(kind(tt.block), j, tt.err, tt.cause)
			if f.ID != 7 || f.Owner != e.Owner() || f.Outcome != tt.want || f.BlockKey != tt.wantBlock {
				t.Fatalf("outcome = %+v, want outcome %d, block %v", f, tt.want, tt.wantBlock)
			}
			if !strings.Contains(f.Error, tt.wantMsg) || (tt.wantMsg == "" && f.Error != "") {
				t.Errorf("Error = %q, want it to contain %q", f.Error, tt.wantMsg)
			}
			switch {
			case tt.want != store.OutcomeRetry:
				if !f.RetryAt.IsZero() {
					t.Errorf("RetryAt = %s for a non-retry outcome", f.RetryAt)
				}
			case tt.wantRetry >= 0:
				if got := f.RetryAt.Sub(now); got != tt.wantRetry {
					t.Errorf("RetryAt = now+%s, want now+%s", got, tt.wantRetry)
				}
			default: // backoff after attempt 1 from a 1m base: 45s..75s
				if got := f.RetryAt.Sub(now); got < 45*time.Second || got > 75*time.Second {
					t.Errorf("RetryAt = now+%s, want a backoff within [45s, 75s]", got)
				}
			}
		})
	}
}

func TestCallRecoversPanics(t *testing.T) {
	t.Parallel()
	err := call(context.Background(), func(context.Context, *store.Job) error { panic("kaboom") }, &store.Job{})
	if err == nil || !strings.HasPrefix(err.Error(), "panic: kaboom") || !strings.Contains(err.Error(), "goroutine") {
		t.Errorf("call of a panicking handler = %v; want an error with the panic value and a stack", err)
	}
	if err := call(context.Background(), func(context.Context, *store.Job) error { return nil }, &store.Job{}); err != nil {
		t.Errorf("call of a succeeding handler = %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{}); err == nil {
		t.Error("New without a Store succeeded")
	}
	if _, err := New(Config{Store: nopStore{}, Kinds: map[string]Kind{"k": {}}}); err == nil {
		t.Error("New with a kind lacking a Handler succeeded")
	}
	e, err := New(Config{Store: nopStore{}, Workers: 4, Kinds: map[string]Kind{
		"over":  {Handler: func(context.Context, *store.Job) error { return nil }, Concurrency: 10},
		"unset": {Handler: func(context.Context, *store.Job) error { return nil }},
		"under": {Handler: func(context.Context, *store.Job) error { return nil }, Concurrency: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for kind, want := range map[string]int{"over": 4, "unset": 4, "under": 2} {
		if k, _ := e.Kind(kind); k.Concurrency != want {
			t.Errorf("kind %s Concurrency = %d, want %d (clamped to Workers)", kind, k.Concurrency, want)
		}
	}
	if e.Owner() == "" {
		t.Error("no default Owner")
	}
}

// An engine that was never started takes no inserts and stops at once.
func TestNotStarted(t *testing.T) {
	t.Parallel()
	e, err := New(Config{Store: nopStore{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Insert(t.Context(), []store.InsertParams{{Kind: "k"}}); !errors.Is(err, ErrStopped) {
		t.Errorf("Insert before Start = %v, want ErrStopped", err)
	}
	if err := e.Stop(t.Context()); err != nil {
		t.Errorf("Stop before Start = %v", err)
	}
	if err := e.Pause("nope", true); err == nil {
		t.Error("Pause of an unknown kind succeeded")
	}
}

// A worker that starts after its job's lease ended (the process stalled
// between claim and start) must not run the handler: the job may already
// run elsewhere. It hands the job back with a release instead.
func TestWorkChecksLeaseBeforeStart(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		leaseUntil time.Time
		wantRun    bool
		want       store.Outcome
	}{
		{"LeaseHeld", now.Add(time.Second), true, store.OutcomeCompleted},
		{"LeaseEndsNow", now, false, store.OutcomeRelease},
		{"LeaseEnded", now.Add(-time.Second), false, store.OutcomeRelease},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ran := false
			e, err := New(Config{Store: nopStore{}, Clock: clock.NewFake(now), Owner: "node-a",
				Kinds: map[string]Kind{"k": {Handler: func(context.Context, *store.Job) error {
					ran = true
					return nil
				}}}})
			if err != nil {
				t.Fatal(err)
			}
			e.workers.Add(1)
			e.work(e.kinds["k"], &store.Job{ID: 7, Kind: "k", LeaseToken: 3, Attempt: 1, MaxAttempts: 3}, tt.leaseUntil, nil)
			f := <-e.finish
			if ran != tt.wantRun {
				t.Errorf("handler ran = %v, want %v", ran, tt.wantRun)
			}
			if f.Outcome != tt.want || f.ID != 7 || f.LeaseToken != 3 || f.Owner != e.Owner() {
				t.Errorf("finish = %+v, want outcome %d for job 7 under node-a's token 3", f.FinishParams, tt.want)
			}
			if got := e.metrics.LeaseExpiredBeforeStart.Load(); (got == 1) == tt.wantRun {
				t.Errorf("LeaseExpiredBeforeStart = %d", got)
			}
		})
	}
}

// Renewals extend a claim only while their chain is unbroken: after a
// stall past the lease, a late renewal must not revive older claims.
func TestLeasesHeld(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	const d = 3 * time.Second
	tests := []struct {
		name     string
		renewals []float64 // start times of successful renewals
		claimEnd float64
		now      float64
		want     bool
	}{
		{"WithinOwnLease", nil, 3, 2.9, true},
		{"OwnLeaseEnded", nil, 3, 3, false},
		{"RenewedInTime", []float64{1, 2}, 3, 4.5, true},
		{"RenewalRanOut", []float64{1, 2}, 3, 5, false},
		{"StalledThenLateRenewal", []float64{1, 6}, 3, 6.5, false},
		{"ClaimAfterLateRenewalChain", []float64{1, 6}, 8, 8.5, true},
		{"ClaimRenewedByNewChain", []float64{1, 6, 7}, 7.5, 9, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var l leases
			for _, r := range tt.renewals {
				l.renewed(at(r), d)
			}
			if got := l.held(at(tt.claimEnd), at(tt.now)); got != tt.want {
				t.Errorf("held(claim ends %vs, now %vs) after renewals %v = %v, want %v", tt.claimEnd, tt.now, tt.renewals, got, tt.want)
			}
		})
	}
	if !LeaseHeld(context.Background()) {
		t.Error("LeaseHeld outside an attempt = false, want true")
	}
}

// Two engines of one node name (a process and its restarted successor)
// claim under different owners: renewals by the successor must not keep
// the dead process's jobs leased.
func TestOwnerUniquePerEngine(t *testing.T) {
	t.Parallel()
	owners := map[string]bool{}
	for range 20 {
		e, err := New(Config{Store: nopStore{}, Owner: "web-1"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(e.Owner(), "web-1-") {
			t.Errorf("Owner() = %q, want the node name web-1 as its prefix", e.Owner())
		}
		owners[e.Owner()] = true
	}
	if len(owners) != 20 {
		t.Errorf("20 engines named web-1 shared owners: %d distinct", len(owners))
	}
}

// A job handed out past its last attempt (a store counted an interrupted
// last attempt, as PostgreSQL's rescue does) is dead-lettered without
// running: a poison job must not get more than MaxAttempts tries.
func TestWorkDiscardsJobPastMaxAttempts(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name          string
		attempt, max  int
		block         bool
		wantRun       bool
		want          store.Outcome
		wantBlockKey  bool
		wantErrSubstr string
	}{
		{name: "last attempt runs", attempt: 3, max: 3, wantRun: true, want: store.OutcomeCompleted},
		{name: "past the last attempt", attempt: 4, max: 3, want: store.OutcomeDiscard, wantErrSubstr: "interrupted"},
		{name: "past the last attempt, blocking kind", attempt: 5, max: 3, block: true, want: store.OutcomeDiscard, wantBlockKey: true, wantErrSubstr: "interrupted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ran := false
			e, err := New(Config{Store: nopStore{}, Clock: clock.NewFake(now),
				Kinds: map[string]Kind{"k": {Handler: func(context.Context, *store.Job) error {
					ran = true
					return nil
				}, BlockKeyOnDiscard: tt.block}}})
			if err != nil {
				t.Fatal(err)
			}
			e.workers.Add(1)
			e.work(e.kinds["k"], &store.Job{ID: 9, Kind: "k", LeaseToken: 2, Attempt: tt.attempt, MaxAttempts: tt.max}, now.Add(time.Minute), nil)
			f := <-e.finish
			if ran != tt.wantRun || f.Outcome != tt.want || f.BlockKey != tt.wantBlockKey || f.ID != 9 || f.LeaseToken != 2 ||
				!strings.Contains(f.Error, tt.wantErrSubstr) {
				t.Errorf("ran=%v finish=%+v, want ran=%v outcome %d block %v error containing %q", ran, f.FinishParams, tt.wantRun, tt.want, tt.wantBlockKey, tt.wantErrSubstr)
			}
		})
	}
}

func TestCommitWait(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name          string
		delay         time.Duration // Config.CommitDelay
		pending, last int
		want          time.Duration
	}{
		{"ManyProducersWait", 0, 3, 40, 100 * time.Microsecond},
		{"AtTheThreshold", 0, 1, commitSiblings, 100 * time.Microsecond},
		{"ConfiguredDelay", time.Millisecond, 1, 100, time.Millisecond},
		{"LoneProducer", 0, 1, 1, 0},
		{"BelowTheThreshold", 0, 5, commitSiblings - 1, 0},
		{"NothingToInsert", 0, 0, 100, 0},
		{"TurnedOff", -1, 5, 100, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := New(Config{Store: nopStore{}, CommitDelay: tt.delay})
			if err != nil {
				t.Fatal(err)
			}
			if got := e.commitWait(tt.pending, tt.last); got != tt.want {
				t.Errorf("commitWait(%d, %d) = %v, want %v", tt.pending, tt.last, got, tt.want)
			}
		})
	}
}

// A statistics refresh that takes longer than a 50th of the interval
// pushes the next one out, so counting a large table stays under 2 % of
// the time.
func TestStatsSpacing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		every, took time.Duration
		want        time.Duration
	}{
		{"fast count keeps the interval", 10 * time.Second, 5 * time.Millisecond, 10 * time.Second},
		{"at the budget", 10 * time.Second, 200 * time.Millisecond, 10 * time.Second},
		{"slow count waits 50 times its duration", 10 * time.Second, 600 * time.Millisecond, 30 * time.Second},
		{"very slow count", time.Second, 4 * time.Second, 200 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := statsSpacing(tt.every, tt.took); got != tt.want {
				t.Errorf("statsSpacing(%v, %v) = %v, want %v", tt.every, tt.took, got, tt.want)
			}
		})
	}
}
