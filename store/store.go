// Package store defines the seam between herald's engine and the database
// that keeps jobs durable.
//
// A Driver owns the per-key line invariant: for every non-empty key with work
// left, exactly one job is the key's head, and only heads are ever claimed.
// Keeping that invariant inside the store (rather than in one process's
// memory) is what lets several nodes share one PostgreSQL database with
// per-key FIFO intact, and what keeps the engine's memory independent of the
// backlog.
//
// Every driver must pass the conformance suite in store/storetest.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Sentinel errors drivers return (wrapped) so callers can branch on them.
var (
	// ErrNotFound means no job has the given id.
	ErrNotFound = errors.New("job not found")
	// ErrWrongState means the operation does not apply to the job's current
	// state, e.g. cancelling a completed job.
	ErrWrongState = errors.New("job is in the wrong state for this operation")
	// ErrUnavailable means the store cannot take writes right now (disk full,
	// read-only, locked). It is temporary: retry later.
	ErrUnavailable = errors.New("store unavailable")
	// ErrCommitUnknown means a transaction's outcome is in doubt: the
	// connection to the store broke while it committed, or its flush to
	// disk failed. Its writes may or may not have been applied (or survive
	// a power loss). Drivers wrap it together with ErrUnavailable.
	// Enqueuers cannot tell whether their jobs were stored; an idempotency
	// key makes the retry safe.
	ErrCommitUnknown = errors.New("store commit outcome unknown")
)

// State is a job's lifecycle state.
type State string

// The states a job moves through. Scheduled, Available and Retryable are
// "pending": the job waits for its turn and its run_at.
const (
	StateScheduled State = "scheduled" // run_at is in the future
	StateAvailable State = "available" // due; waits for its key's turn and a worker slot
	StateRunning   State = "running"   // a worker is running it
	StateRetryable State = "retryable" // failed; waits for its backoff to elapse
	StateCompleted State = "completed"
	StateDiscarded State = "discarded" // dead letter: gave up after max attempts or a permanent error
	StateCancelled State = "cancelled"
)

// Finalized reports whether the state is terminal.
func (s State) Finalized() bool {
	return s == StateCompleted || s == StateDiscarded || s == StateCancelled
}

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool {
	switch s {
	case StateScheduled, StateAvailable, StateRunning, StateRetryable,
		StateCompleted, StateDiscarded, StateCancelled:
		return true
	}
	return false
}

// AttemptError records why one attempt failed.
type AttemptError struct {
	At      time.Time `json:"at"`
	Attempt int       `json:"attempt"`
	Message string    `json:"message"`
}

// Job is a stored job, as drivers return it.
type Job struct {
	ID             int64
	Kind           string
	Key            string // ordering key; "" means unordered
	Payload        json.RawMessage
	State          State
	Attempt        int // attempts started so far
	MaxAttempts    int
	RunAt          time.Time // earliest time the next attempt may start
	DueAt          time.Time // position in the key's line: when the job became due
	IdempotencyKey string
	Errors         []AttemptError
	CreatedAt      time.Time
	StartedAt      time.Time // zero until the first attempt starts
	FinishedAt     time.Time // zero until finalized
	// Head reports whether the job is at the front of its key's line.
	Head bool
	// LeaseOwner is the node running the job (running jobs only).
	LeaseOwner string
	// LeaseToken identifies one claim of the job (running jobs only). It is
	// a fencing token: a finish must present it, so a worker that lost its
	// lease and later wakes cannot write over a newer claim, even one taken
	// by the same node.
	LeaseToken int64
	// Output is what a handler last recorded for the job (see
	// FinishParams.Output), kept across attempts so a retry can resume
	// where the previous attempt stopped; nil if nothing was recorded.
	Output json.RawMessage
}

// InsertParams describes one job to insert.
type InsertParams struct {
	Kind           string
	Key            string
	Payload        json.RawMessage
	RunAt          time.Time // zero means now
	MaxAttempts    int
	IdempotencyKey string // "" means none
}

// InsertResult is the outcome of one InsertParams.
type InsertResult struct {
	Job *Job
	// Existing is true when IdempotencyKey matched a job created within the
	// idempotency window; Job is then that job and nothing was inserted.
	Existing bool
}

// InsertManyParams is a batch stored in one transaction: all or nothing.
type InsertManyParams struct {
	Jobs []InsertParams
	Now  time.Time
	// IdempotencySince: an existing job with the same idempotency key created
	// at or after this time is returned instead of inserting.
	IdempotencySince time.Time
}

// ClaimParams asks for ready heads to run.
type ClaimParams struct {
	Now time.Time
	// Owner identifies the claiming node; written as the lease owner.
	Owner string
	// LeaseUntil is when the claim expires unless renewed.
	LeaseUntil time.Time
	// Limits caps how many jobs of each kind to claim, tried in order. Kinds
	// absent from the slice are not claimed.
	Limits []KindLimit
	// Max caps the total across kinds.
	Max int
}

// KindLimit is one kind's claim cap.
type KindLimit struct {
	Kind string
	Max  int
}

// Outcome says how an attempt ended.
type Outcome int

const (
	// OutcomeCompleted is success: the job is finalized and its key advances.
	OutcomeCompleted Outcome = iota + 1
	// OutcomeRetry is a failure to retry at RetryAt; the job stays its key's head.
	OutcomeRetry
	// OutcomeDiscard is a failure for good; the key advances unless BlockKey.
	OutcomeDiscard
	// OutcomeRelease means not attempted to the end (shutdown): back to pending
	// without consuming the attempt.
	OutcomeRelease
)

// FinishParams records how one claimed job's attempt ended.
type FinishParams struct {
	ID    int64
	Owner string // must still be the lease owner, or the write is fenced off
	// LeaseToken is the claimed job's LeaseToken; it must match the current
	// claim, or the write is fenced off.
	LeaseToken int64
	Outcome    Outcome
	Error      string    // for Retry and Discard
	RetryAt    time.Time // for Retry
	// Output, if non-nil, replaces the job's stored Output whatever the
	// outcome (e.g. per-recipient SMTP replies, so a retry skips accepted
	// recipients).
	Output json.RawMessage
	// BlockKey keeps a discarded job at the head of its key's line so the
	// key waits for an operator (Retry or Cancel).
	BlockKey bool
}

// FinishManyParams is a batch of outcomes written in one transaction.
type FinishManyParams struct {
	Now      time.Time
	Finishes []FinishParams
}

// FinishResult reports per-finish whether the write took effect.
type FinishResult struct {
	ID int64
	// Fenced is true when the job was no longer running under Owner and
	// LeaseToken (its lease expired and it was rescued, maybe claimed
	// again); nothing was written for it.
	Fenced bool
}

// ListParams filters List. Zero values mean "any".
type ListParams struct {
	State   State
	Kind    string
	Key     string
	AfterID int64 // cursor: ids greater than this, ascending
	Limit   int
	Now     time.Time
}

// RescueParams returns running jobs whose lease expired to the queue.
type RescueParams struct {
	Now time.Time
	// ExpiredBefore: running jobs with lease_until before this are rescued.
	ExpiredBefore time.Time
}

// PruneParams deletes finalized jobs past their retention.
type PruneParams struct {
	CompletedBefore   time.Time // completed or cancelled jobs finished before this
	DiscardedBefore   time.Time // discarded jobs finished before this (not blocking a key)
	IdempotencyBefore time.Time
	Limit             int // max rows per call, to keep transactions short
}

// Stats is a snapshot of the store's contents.
type Stats struct {
	// ByKindState counts jobs by kind, then state.
	ByKindState map[string]map[State]int64
	// ReadyKeys is the number of line heads that could start now.
	ReadyKeys int64
	// OldestPendingDueAt is the due time of the oldest pending job; zero if none.
	OldestPendingDueAt time.Time
}

// KeyLine describes one key's line.
type KeyLine struct {
	Key     string
	Pending int64 // jobs not finalized, including the head
	Head    *Job  // nil when the key has no line
}

// ExchangeParams is one engine cycle's writes and claim, done in one
// transaction so that a busy engine pays one commit (one fsync) per cycle
// rather than one per job or per kind of write.
type ExchangeParams struct {
	Now              time.Time
	Inserts          []InsertParams
	IdempotencySince time.Time
	Finishes         []FinishParams
	// Claim, if set, claims ready heads after the writes, so a job whose
	// predecessor just finished can start in the same transaction.
	Claim *ClaimParams
}

// ExchangeResult holds, in order, the results of an ExchangeParams.
type ExchangeResult struct {
	Inserted []InsertResult
	Finished []FinishResult
	Claimed  []*Job
}

// Driver is a storage backend. Methods are safe for concurrent use. Every
// batch method is one transaction.
type Driver interface {
	// Exchange inserts, finishes and claims in one transaction: all or
	// nothing. InsertMany, FinishMany and Claim are its parts on their own.
	Exchange(ctx context.Context, p ExchangeParams) (*ExchangeResult, error)
	// InsertMany stores a batch durably, all or nothing, and places each job
	// in its key's line. Every job gets a new id, above every id of earlier
	// batches; a key's ids rise in the order given. Across keys a driver
	// may order one batch's ids as it writes them (SQLite groups a large
	// batch by key).
	InsertMany(ctx context.Context, p InsertManyParams) ([]InsertResult, error)
	// Claim marks ready line heads running under a lease and returns them.
	// A head is ready when its state is pending and run_at <= Now.
	Claim(ctx context.Context, p ClaimParams) ([]*Job, error)
	// FinishMany records attempt outcomes and advances key lines.
	FinishMany(ctx context.Context, p FinishManyParams) ([]FinishResult, error)
	// RenewLeases extends the lease of every job running under owner.
	RenewLeases(ctx context.Context, owner string, until time.Time) error
	// Rescue returns running jobs with expired leases to pending, keeping
	// their place at the head of their key's line. It returns how many.
	Rescue(ctx context.Context, p RescueParams) (int, error)
	// NextRunAt is the earliest run_at among pending heads of the given
	// kinds (zero if none), so an idle engine knows how long it may sleep.
	NextRunAt(ctx context.Context, kinds []string) (time.Time, error)

	Get(ctx context.Context, id int64) (*Job, error)
	List(ctx context.Context, p ListParams) ([]*Job, error)
	Line(ctx context.Context, key string) (*KeyLine, error)
	// Retry makes a discarded, cancelled or pending job available now, with
	// a fresh set of attempts.
	Retry(ctx context.Context, id int64, now time.Time) (*Job, error)
	// Cancel finalizes a job that is not running and not finalized.
	Cancel(ctx context.Context, id int64, now time.Time) (*Job, error)

	Prune(ctx context.Context, p PruneParams) (int, error)
	Stats(ctx context.Context, now time.Time) (*Stats, error)
	Ping(ctx context.Context) error
	Close() error
}

// Listener is implemented by drivers that several processes share. Listen
// calls wake whenever another process may have made work ready (inserted,
// finished, retried or resumed jobs) and returns when ctx ends. Wake-ups
// are hints: engines poll as well, so a lost notification only delays.
type Listener interface {
	Listen(ctx context.Context, wake func()) error
}

// Elector is implemented by drivers that several processes share, so that
// one of them (the leader) runs maintenance: rescuing expired leases and
// pruning. Elect tries to become or stay leader as owner for ttl and
// reports whether owner leads. Without an Elector every engine maintains.
type Elector interface {
	Elect(ctx context.Context, owner string, ttl time.Duration) (bool, error)
}

// Durable waits until a commit is durable and returns nil, or returns an
// error wrapping ErrCommitUnknown (and ErrUnavailable) if it may never be.
type Durable func() error

// DeferredSyncer is implemented by drivers that can return from an
// exchange as soon as its transaction is committed and visible, and make
// it durable in the background. The caller's next exchange then overlaps
// this one's sync, a pipelined group commit: SQLite's store loop would
// otherwise wait on the disk's flush in every cycle.
type DeferredSyncer interface {
	// ExchangeDeferred is Exchange, except that it may return before the
	// transaction is durable. Nothing that relies on that (acknowledging
	// an insert, running a claimed job) may happen before durable returns
	// nil. Later exchanges see this one's writes at once, and a commit is
	// durable no later than any commit after it.
	ExchangeDeferred(ctx context.Context, p ExchangeParams) (*ExchangeResult, Durable, error)
}

// ParallelLoops is implemented by drivers that serve several store loops of
// one client at once, each exchanging on its own connection, with per-key
// order kept by the store alone. PreferredLoops is how many a client runs
// when its configuration does not say. A driver without it serves one loop.
type ParallelLoops interface {
	PreferredLoops() int
}
