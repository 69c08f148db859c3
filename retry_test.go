package herald_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/clock"
)

// attemptLog collects, per job, the fake time each attempt started.
type attemptLog struct {
	mu     sync.Mutex
	starts map[int64][]time.Time
}

func (l *attemptLog) add(id int64, at time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.starts == nil {
		l.starts = map[int64][]time.Time{}
	}
	l.starts[id] = append(l.starts[id], at)
	return len(l.starts[id])
}

func (l *attemptLog) count(id int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.starts[id])
}

// Failed attempts are retried after an exponential backoff with ±25%
// jitter; the job stays retryable meanwhile and never starts early.
func TestRetryBackoff(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(fakeStart)
	cfg := testConfig(t)
	cfg.Clock = clk
	cfg.LeaseDuration = time.Hour
	c := newClient(t, cfg)
	var log attemptLog
	failedAt := make(chan time.Time, 10)
	mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
		now := clk.Now()
		log.add(j.ID, now)
		if j.Attempt <= 3 {
			failedAt <- now
			return fmt.Errorf("attempt %d failed", j.Attempt)
		}
		return nil
	}, herald.KindConfig{BackoffBase: 10 * time.Second, BackoffCap: 30 * time.Second, MaxAttempts: 10})
	mustStart(t, c)
	id := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct"}).ID

	// Backoff after attempt n: base·2^(n-1), capped, ±25%.
	for n, nominal := range []time.Duration{10 * time.Second, 20 * time.Second, 30 * time.Second} {
		attempt := n + 1
		var failed time.Time
		select {
		case failed = <-failedAt:
		case <-time.After(10 * time.Second):
			t.Fatalf("attempt %d did not run", attempt)
		}
		var j *herald.Job
		waitErr(t, 10*time.Second, func() error {
			var err error
			j, err = c.Get(t.Context(), id)
			if err != nil {
				return err
			}
			if j.State != herald.StateRetryable || j.Attempt != attempt {
				return fmt.Errorf("after attempt %d: job %s with attempt %d, want retryable with attempt %d", attempt, j.State, j.Attempt, attempt)
			}
			return nil
		})
		delay := j.RunAt.Sub(failed)
		// The fake clock may move by one advanceUntil step between the
		// handler's reading and the engine's: allow for it.
		if lo, hi := nominal-nominal/4, nominal+nominal/4+200*time.Millisecond; delay < lo || delay > hi {
			t.Errorf("backoff after attempt %d = %s, want within [%s, %s]", attempt, delay, lo, hi)
		}
		if len(j.Errors) != attempt || j.Errors[attempt-1].Attempt != attempt ||
			j.Errors[attempt-1].Message != fmt.Sprintf("attempt %d failed", attempt) {
			t.Errorf("Errors after attempt %d = %+v", attempt, j.Errors)
		}
		// Just before RunAt nothing runs.
		if d := j.RunAt.Sub(clk.Now()) - time.Millisecond; d > 0 {
			clk.Advance(d)
		}
		time.Sleep(50 * time.Millisecond)
		if n := log.count(id); n != attempt {
			t.Fatalf("attempt %d started before its backoff elapsed", n)
		}
		advanceUntil(t, clk, 100*time.Millisecond, "the next attempt", func() bool { return log.count(id) > attempt })
	}
	j := waitState(t, c, id, herald.StateCompleted)
	if j.Attempt != 4 || len(j.Errors) != 3 {
		t.Errorf("completed job: attempt %d, %d errors; want 4 and 3", j.Attempt, len(j.Errors))
	}
}

// How a handler's error decides the job's fate.
func TestFailureOutcomes(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name        string
		maxAttempts int
		fail        func(attempt int) error // nil means succeed
		wantState   herald.JobState
		wantAttempt int
		wantErrs    []string // substrings of Errors[i].Message
	}{
		{"SucceedsFirstTime", 3, func(int) error { return nil }, herald.StateCompleted, 1, nil},
		{"RetriedThenSucceeds", 3, func(a int) error {
			if a < 3 {
				return errors.New("flaky")
			}
			return nil
		}, herald.StateCompleted, 3, []string{"flaky", "flaky"}},
		{"ExhaustsAttempts", 3, func(a int) error { return fmt.Errorf("down %d", a) },
			herald.StateDiscarded, 3, []string{"down 1", "down 2", "down 3"}},
		{"PermanentDiscardsAtOnce", 5, func(int) error { return herald.Permanent(errors.New("bad address")) },
			herald.StateDiscarded, 1, []string{"bad address"}},
		{"PermanentAfterRetry", 5, func(a int) error {
			if a == 1 {
				return errors.New("flaky")
			}
			return herald.Permanent(errors.New("gone"))
		}, herald.StateDiscarded, 2, []string{"flaky", "gone"}},
		{"RetryAfterCountsAsFailure", 2, func(a int) error { return herald.RetryAfter(time.Millisecond, errors.New("429")) },
			herald.StateDiscarded, 2, []string{"429", "429"}},
		{"PanicIsAFailure", 3, func(a int) error {
			if a == 1 {
				panic("handler bug")
			}
			return nil
		}, herald.StateCompleted, 2, []string{"panic: handler bug"}},
		{"PanicOnLastAttemptDiscards", 1, func(int) error { panic(fmt.Errorf("wrapped %d", 7)) },
			herald.StateDiscarded, 1, []string{"panic: wrapped 7"}},
		{"MaxAttemptsOne", 1, func(int) error { return errors.New("once") }, herald.StateDiscarded, 1, []string{"once"}},
	}
	cfg := testConfig(t)
	c := newClient(t, cfg)
	byKind := map[string]func(int) error{}
	for _, tt := range tests {
		byKind[tt.name] = tt.fail
		mustRegister(t, c, tt.name, func(_ context.Context, j *herald.Job) error {
			return byKind[j.Kind](j.Attempt)
		}, herald.KindConfig{BackoffBase: time.Millisecond, BackoffCap: 5 * time.Millisecond})
	}
	mustStart(t, c)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := mustEnqueue(t, c, herald.EnqueueParams{Kind: tt.name, Key: "k-" + tt.name, MaxAttempts: tt.maxAttempts}).ID
			j := waitState(t, c, id, tt.wantState)
			if j.Attempt != tt.wantAttempt {
				t.Errorf("Attempt = %d, want %d", j.Attempt, tt.wantAttempt)
			}
			if len(j.Errors) != len(tt.wantErrs) {
				t.Fatalf("Errors = %+v, want %d entries", j.Errors, len(tt.wantErrs))
			}
			for i, want := range tt.wantErrs {
				e := j.Errors[i]
				if !strings.Contains(e.Message, want) || e.Attempt != i+1 || e.At.IsZero() {
					t.Errorf("Errors[%d] = %+v, want attempt %d mentioning %q", i, e, i+1, want)
				}
			}
			if tt.wantState.Finalized() && j.FinishedAt.IsZero() {
				t.Error("finalized job has no FinishedAt")
			}
		})
	}
}

// RetryAfter schedules the next attempt after exactly its delay.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		delay time.Duration
	}{
		{"Short", 3 * time.Second},
		{"LongerThanBackoffCap", 2 * time.Hour},
		{"Zero", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := clock.NewFake(fakeStart)
			cfg := testConfig(t)
			cfg.Clock = clk
			cfg.LeaseDuration = 3 * time.Hour
			c := newClient(t, cfg)
			var log attemptLog
			mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
				log.add(j.ID, clk.Now())
				if j.Attempt == 1 {
					return herald.RetryAfter(tt.delay, errors.New("rate limited"))
				}
				return nil
			}, herald.KindConfig{BackoffBase: time.Minute, BackoffCap: time.Hour})
			mustStart(t, c)
			id := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct"}).ID
			if tt.delay == 0 {
				// Due at once: retried without the clock moving.
				j := waitState(t, c, id, herald.StateCompleted)
				if j.Attempt != 2 || len(j.Errors) != 1 || !strings.Contains(j.Errors[0].Message, "rate limited") {
					t.Errorf("job = attempt %d, errors %+v; want completed on attempt 2 after one failure", j.Attempt, j.Errors)
				}
				return
			}
			waitFor(t, 10*time.Second, "the first attempt", func() bool { return log.count(id) == 1 })
			j := waitState(t, c, id, herald.StateRetryable)
			if want := fakeStart.Add(tt.delay); !j.RunAt.Equal(want) {
				t.Errorf("RunAt = %s, want %s (failure time + RetryAfter delay)", j.RunAt, want)
			}
			if len(j.Errors) != 1 || !strings.Contains(j.Errors[0].Message, "rate limited") {
				t.Errorf("Errors = %+v", j.Errors)
			}
			advanceUntil(t, clk, max(tt.delay/20, time.Millisecond), "the retry", func() bool { return log.count(id) == 2 })
			log.mu.Lock()
			second := log.starts[id][1]
			log.mu.Unlock()
			if second.Before(fakeStart.Add(tt.delay)) {
				t.Errorf("retry started at %s, before the RetryAfter delay passed", second)
			}
			waitState(t, c, id, herald.StateCompleted)
		})
	}
}

// A job being retried keeps its key's line: the next job waits for it.
func TestRetryKeepsKeyBlocked(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	tr := newTracker()
	mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
		defer tr.begin(j)()
		if string(j.Payload) == `"first"` && j.Attempt < 3 {
			return herald.RetryAfter(30*time.Millisecond, errors.New("not yet"))
		}
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)
	first := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct", Payload: "first"}).ID
	second := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct", Payload: "second"}).ID
	waitState(t, c, second, herald.StateCompleted)
	got := tr.startOrder()
	want := []int64{first, first, first, second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("start order %v, want %v", got, want)
	}
}

// What a dead letter does to its key: DiscardContinue lets the next job run;
// DiscardBlock holds the key until an operator retries or cancels it.
func TestDiscardPolicy(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		policy  herald.DiscardPolicy
		resolve string // "retry", "cancel" or "" (none needed)
	}{
		{"ContinueByDefault", herald.DiscardContinue, ""},
		{"BlockUntilRetry", herald.DiscardBlock, "retry"},
		{"BlockUntilCancel", herald.DiscardBlock, "cancel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, testConfig(t))
			tr := newTracker()
			var poisoned atomic.Bool
			poisoned.Store(true)
			mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
				defer tr.begin(j)()
				if string(j.Payload) == `"poison"` && poisoned.Load() {
					return herald.Permanent(errors.New("cannot deliver"))
				}
				return nil
			}, herald.KindConfig{OnDiscard: tt.policy})
			mustStart(t, c)
			ctx := t.Context()
			dead := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct", Payload: "poison"}).ID
			next := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct", Payload: "next"}).ID
			other := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "other", Payload: "other"}).ID

			j := waitState(t, c, dead, herald.StateDiscarded)
			if len(j.Errors) != 1 || !strings.Contains(j.Errors[0].Message, "cannot deliver") {
				t.Errorf("dead letter Errors = %+v", j.Errors)
			}
			waitState(t, c, other, herald.StateCompleted) // other keys are never blocked
			if tt.policy == herald.DiscardContinue {
				waitState(t, c, next, herald.StateCompleted)
				return
			}

			time.Sleep(150 * time.Millisecond) // many poll intervals
			if j, _ := c.Get(ctx, next); j.State.Finalized() || j.Attempt != 0 {
				t.Fatalf("job behind a blocking dead letter ran: %+v", j)
			}
			line, err := c.Line(ctx, "acct")
			if err != nil || line.Head == nil || line.Head.ID != dead || line.Pending != 2 {
				t.Errorf("Line = %+v, %v; want the dead letter %d at the head, 2 in line", line, err, dead)
			}
			if _, err := c.Retry(ctx, next); err != nil {
				t.Logf("Retry of the waiting job: %v", err) // allowed; must not jump the line either way
			}
			time.Sleep(100 * time.Millisecond)
			if j, _ := c.Get(ctx, next); j.State.Finalized() {
				t.Fatalf("waiting job jumped ahead of the blocking dead letter after Retry: %+v", j)
			}

			switch tt.resolve {
			case "retry":
				poisoned.Store(false)
				j, err := c.Retry(ctx, dead)
				if err != nil {
					t.Fatalf("Retry(dead letter): %v", err)
				}
				if j.Attempt != 0 || j.State.Finalized() {
					t.Errorf("retried dead letter = %+v; want pending with a fresh set of attempts", j)
				}
				waitState(t, c, dead, herald.StateCompleted)
			case "cancel":
				j, err := c.Cancel(ctx, dead)
				if err != nil || j.State != herald.StateCancelled {
					t.Fatalf("Cancel(dead letter) = %+v, %v", j, err)
				}
			}
			waitState(t, c, next, herald.StateCompleted)
			// The dead letter (if retried) ran before the next job.
			order := tr.startOrder()
			if order[len(order)-1] != next {
				t.Errorf("start order %v: job %d should start last", order, next)
			}
		})
	}
}

// Retry and Cancel on jobs in the wrong state.
func TestRetryCancelWrongState(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	mustRegister(t, c, "k", noop, herald.KindConfig{})
	mustStart(t, c)
	ctx := t.Context()
	id := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "a"}).ID
	waitState(t, c, id, herald.StateCompleted)
	if _, err := c.Retry(ctx, id); !errors.Is(err, herald.ErrWrongState) {
		t.Errorf("Retry(completed) = %v, want ErrWrongState", err)
	}
	if _, err := c.Cancel(ctx, id); !errors.Is(err, herald.ErrWrongState) {
		t.Errorf("Cancel(completed) = %v, want ErrWrongState", err)
	}
	if _, err := c.Retry(ctx, 999999); !errors.Is(err, herald.ErrNotFound) {
		t.Errorf("Retry(missing) = %v, want ErrNotFound", err)
	}
	if _, err := c.Cancel(ctx, 999999); !errors.Is(err, herald.ErrNotFound) {
		t.Errorf("Cancel(missing) = %v, want ErrNotFound", err)
	}
}

// Timeout cancels the handler's context; the attempt is a failure with
// the timeout in its error.
func TestTimeout(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name        string
		handler     func(ctx context.Context, attempt int) error
		maxAttempts int
		wantState   herald.JobState
		wantErrs    int
	}{
		{"HandlerHonoursContext", func(ctx context.Context, _ int) error {
			<-ctx.Done()
			return ctx.Err()
		}, 2, herald.StateDiscarded, 2},
		{"TimesOutThenSucceeds", func(ctx context.Context, attempt int) error {
			if attempt == 1 {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		}, 3, herald.StateCompleted, 1},
		{"HandlerReturnsOwnError", func(ctx context.Context, _ int) error {
			<-ctx.Done()
			return errors.New("upstream call aborted")
		}, 1, herald.StateDiscarded, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, testConfig(t))
			var sawDeadline atomic.Int64
			mustRegister(t, c, "k", func(ctx context.Context, j *herald.Job) error {
				err := tt.handler(ctx, j.Attempt)
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					sawDeadline.Add(1)
				}
				return err
			}, herald.KindConfig{Timeout: 50 * time.Millisecond, BackoffBase: time.Millisecond})
			mustStart(t, c)
			start := time.Now()
			id := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "a", MaxAttempts: tt.maxAttempts}).ID
			j := waitState(t, c, id, tt.wantState)
			if len(j.Errors) != tt.wantErrs {
				t.Fatalf("Errors = %+v, want %d", j.Errors, tt.wantErrs)
			}
			for _, e := range j.Errors {
				if !strings.Contains(e.Message, "timeout") {
					t.Errorf("error %q does not mention the timeout", e.Message)
				}
			}
			if int(sawDeadline.Load()) != tt.wantErrs {
				t.Errorf("handler saw a deadline exceeded %d times, want %d", sawDeadline.Load(), tt.wantErrs)
			}
			if el := time.Since(start); el < time.Duration(tt.wantErrs)*50*time.Millisecond {
				t.Errorf("finished after %s; the timeout fired early", el)
			}
		})
	}
}

// A handler that ignores its context past the timeout still cannot let the
// key's next job start before it returns.
func TestTimeoutIgnoredKeepsOrder(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	tr := newTracker()
	mustRegister(t, c, "k", func(ctx context.Context, j *herald.Job) error {
		defer tr.begin(j)()
		if j.Attempt == 1 && string(j.Payload) == `"slow"` {
			time.Sleep(150 * time.Millisecond) // ignores ctx
			return ctx.Err()
		}
		return nil
	}, herald.KindConfig{Timeout: 20 * time.Millisecond, BackoffBase: time.Millisecond})
	mustStart(t, c)
	slow := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "a", Payload: "slow"}).ID
	next := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "a", Payload: "next"}).ID
	waitState(t, c, next, herald.StateCompleted)
	if ov := tr.overlaps(); len(ov) > 0 {
		t.Errorf("overlap on %v", ov)
	}
	j, _ := c.Get(t.Context(), slow)
	if j.State != herald.StateCompleted || j.Attempt != 2 || len(j.Errors) != 1 {
		t.Errorf("slow job = %s attempt %d errors %+v; want completed on attempt 2 after one timeout", j.State, j.Attempt, j.Errors)
	}
}

// MaxAttempts comes from the job, else the kind, else the client default.
func TestMaxAttemptsPrecedence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name             string
		kindMax, jobMax  int
		wantAttemptsUsed int
	}{
		{"ClientDefault", 0, 0, 2},
		{"KindOverridesDefault", 3, 0, 3},
		{"JobOverridesKind", 3, 1, 1},
		{"JobOverridesDefault", 0, 4, 4},
	}
	cfg := testConfig(t)
	cfg.DefaultMaxAttempts = 2
	c := newClient(t, cfg)
	for _, tt := range tests {
		mustRegister(t, c, tt.name, func(context.Context, *herald.Job) error { return errors.New("always") },
			herald.KindConfig{MaxAttempts: tt.kindMax, BackoffBase: time.Millisecond, BackoffCap: time.Millisecond})
	}
	mustStart(t, c)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := mustEnqueue(t, c, herald.EnqueueParams{Kind: tt.name, MaxAttempts: tt.jobMax})
			if res.MaxAttempts != tt.wantAttemptsUsed {
				t.Errorf("stored MaxAttempts = %d, want %d", res.MaxAttempts, tt.wantAttemptsUsed)
			}
			j := waitState(t, c, res.ID, herald.StateDiscarded)
			if j.Attempt != tt.wantAttemptsUsed || len(j.Errors) != tt.wantAttemptsUsed {
				t.Errorf("discarded after %d attempts with %d errors, want %d", j.Attempt, len(j.Errors), tt.wantAttemptsUsed)
			}
		})
	}
}
