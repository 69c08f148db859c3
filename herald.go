// Package herald is a durable job queue with per-key FIFO order.
//
// Jobs that share a key run strictly one at a time, in the order they became
// due; jobs of different keys run in parallel. Enqueue returns only once a
// job is on disk, and a job that was running when the process died runs
// again after restart (at-least-once).
//
// A minimal program:
//
//	client, err := herald.New(herald.Config{DataDir: "./herald-data"})
//	...
//	client.Register("greet", herald.HandlerFunc(func(ctx context.Context, job *herald.Job) error {
//		fmt.Println(string(job.Payload))
//		return nil
//	}), herald.KindConfig{})
//	client.Start(ctx)
//	client.Enqueue(ctx, herald.EnqueueParams{Kind: "greet", Key: "account-42", Payload: map[string]any{"hi": 1}})
//	...
//	client.Stop(ctx)
package herald

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/heraldmq/herald/internal/engine"
	"github.com/heraldmq/herald/store"
)

// Job is a stored job as handlers and queries see it.
type Job = store.Job

// JobState is a job's lifecycle state.
type JobState = store.State

// AttemptError records one failed attempt.
type AttemptError = store.AttemptError

// The job states.
const (
	StateScheduled = store.StateScheduled
	StateAvailable = store.StateAvailable
	StateRunning   = store.StateRunning
	StateRetryable = store.StateRetryable
	StateCompleted = store.StateCompleted
	StateDiscarded = store.StateDiscarded
	StateCancelled = store.StateCancelled
)

// Sentinel errors. Errors returned by Client wrap these; test with errors.Is.
var (
	// ErrInvalidJob: an enqueue request is malformed. The error is a
	// *FieldError naming the field.
	ErrInvalidJob = errors.New("invalid job")
	// ErrUnknownKind: no handler is registered for the job's kind.
	ErrUnknownKind = errors.New("unknown kind")
	// ErrPayloadTooLarge: the payload exceeds Config.MaxPayloadBytes.
	ErrPayloadTooLarge = errors.New("payload too large")
	// ErrNotStarted: the client has not been started.
	ErrNotStarted = errors.New("herald: client not started")
	// ErrStopped: the client is stopping or stopped; no new work is taken.
	ErrStopped = engine.ErrStopped
	// ErrNotFound: no job has that id.
	ErrNotFound = store.ErrNotFound
	// ErrWrongState: the operation does not apply to the job's state.
	ErrWrongState = store.ErrWrongState
	// ErrUnavailable: the store cannot take writes right now; retry later.
	ErrUnavailable = store.ErrUnavailable
	// ErrCommitUnknown: the connection to the store broke while the write
	// committed, or its flush to disk failed, so it may or may not have
	// been stored (it also matches ErrUnavailable). Retry with an
	// idempotency key to be safe.
	ErrCommitUnknown = store.ErrCommitUnknown
)

// FieldError says which field of a request is wrong and why.
type FieldError struct {
	Field   string
	Message string
	// Kind is the sentinel the error matches (ErrInvalidJob by default).
	Kind error
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Message) }

// Is lets errors.Is match the sentinel.
func (e *FieldError) Is(target error) bool {
	if e.Kind == nil {
		return target == ErrInvalidJob
	}
	return target == e.Kind
}

func fieldErr(kind error, field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...), Kind: kind}
}

// PermanentError marks a handler failure that retrying cannot fix.
type PermanentError = engine.PermanentError

// RetryAfterError asks for the next attempt after a given delay.
type RetryAfterError = engine.RetryAfterError

// Permanent wraps err so the job is discarded at once, without retries.
func Permanent(err error) error { return &PermanentError{Err: err} }

// RetryAfter wraps err so the next attempt starts after d instead of the
// backoff delay (e.g. when the remote side answered 429 Retry-After). It
// still counts as a failed attempt.
func RetryAfter(d time.Duration, err error) error { return &RetryAfterError{Delay: d, Err: err} }

// LeaseHeld reports whether the running attempt's lease still holds by
// this process's reckoning (true outside an attempt). A handler can check
// it just before a side effect that must not be repeated or reordered:
// after this process stalled longer than the lease (SIGSTOP, a frozen VM),
// the job may already run on another node, and its outcome here will not
// be recorded anyway.
func LeaseHeld(ctx context.Context) bool { return engine.LeaseHeld(ctx) }

// ErrNoAttempt is returned by RecordOutput outside a running attempt.
var ErrNoAttempt = engine.ErrNoAttempt

// RecordOutput stores v, encoded as JSON (at most 256 KiB), as the running
// job's output. It is written with the attempt's outcome, whatever that is,
// and the next attempt finds it in Job.Output: a handler that does several
// things can record its progress and, when retried, skip what is done (the
// email handler records which recipients the server already accepted).
// Calling it again replaces the earlier value.
func RecordOutput(ctx context.Context, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("herald: record output: %w", err)
	}
	return engine.RecordOutput(ctx, raw)
}
