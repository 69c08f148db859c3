package herald

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/heraldmq/herald/clock"
	"github.com/heraldmq/herald/store"
)

// Config configures a Client. Zero fields take the documented defaults.
type Config struct {
	// Store is the storage driver. Defaults to the embedded SQLite store at
	// DataDir/herald.db, which the client opens and closes itself.
	Store store.Driver
	// DataDir holds the embedded SQLite database when Store is nil.
	// Defaults to "./herald-data".
	DataDir string

	// Workers is the global cap on concurrently running jobs. Worker slots
	// are goroutines, so I/O-bound kinds can use thousands. Defaults to 1000.
	Workers int
	// NodeName identifies this process as lease owner. Defaults to a random
	// name; set it to something stable (e.g. the host name) to make logs
	// easier to follow.
	NodeName string
	// StoreLoops is how many store loops the client runs: each writes its
	// own cycles (enqueues, outcomes, claims) on its own connection, with
	// its share of Workers and of each kind's Concurrency and its own lease
	// owner name (NodeName, then NodeName#2, …). A PostgreSQL loop is bound
	// by the one database backend running its cycles, so a second loop lets
	// one node use a second core of the database server. Per-key order
	// does not depend on it: the store orders each key's line, whichever
	// loop stores or runs its jobs. 0 means the store's preference: 2 on
	// PostgreSQL, 1 on SQLite, which has one writer and allows only 1
	// (New fails on more). Never more loops run than Workers.
	StoreLoops int

	// MaxPayloadBytes caps a job's payload. Defaults to 1 MiB.
	MaxPayloadBytes int
	// MaxKeyBytes caps a job's key. Defaults to 512.
	MaxKeyBytes int
	// DefaultMaxAttempts applies to kinds that set none. Defaults to 25.
	DefaultMaxAttempts int

	// PollInterval is the longest an idle engine sleeps before looking for
	// work that other processes added or that came due. Defaults to 1s.
	PollInterval time.Duration
	// LeaseDuration is how long a claim stays valid without renewal; leases
	// are renewed every third of it. Defaults to 15s.
	LeaseDuration time.Duration
	// CompletedRetention is how long completed and cancelled jobs are kept.
	// Defaults to 24h; negative keeps them forever.
	CompletedRetention time.Duration
	// DiscardedRetention is how long dead letters are kept. Defaults to
	// 7 days; negative keeps them forever. A dead letter that blocks its key
	// is never pruned.
	DiscardedRetention time.Duration
	// IdempotencyWindow is how long an idempotency key maps to its job.
	// Defaults to 24h.
	IdempotencyWindow time.Duration
	// MaintenanceInterval is how often leases are rescued and retention is
	// applied. Defaults to 1m.
	MaintenanceInterval time.Duration
	// StatsInterval is how often store statistics (backlog, ready keys,
	// oldest pending age) are refreshed. Defaults to 10s. Counting scans
	// the jobs table, so when one refresh takes longer than a 50th of the
	// interval (a large retained history), the next waits 50 times as long
	// as it took: the gauges never cost more than 2 % of a core.
	StatsInterval time.Duration

	// Logger receives operational logs. Defaults to discarding them. Job
	// payloads are never logged.
	Logger *slog.Logger
	// Clock is the time source. Defaults to the wall clock; tests inject
	// clock.Fake to exercise scheduling and backoff without waiting.
	Clock clock.Clock
	// OnAttempt, if set, is called after each attempt's outcome is stored.
	OnAttempt func(kind string, outcome store.Outcome, d time.Duration)
}

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.DataDir = cmp.Or(c.DataDir, "./herald-data")
	c.Workers = cmp.Or(c.Workers, 1000)
	c.MaxPayloadBytes = cmp.Or(c.MaxPayloadBytes, 1<<20)
	c.MaxKeyBytes = cmp.Or(c.MaxKeyBytes, 512)
	c.DefaultMaxAttempts = cmp.Or(c.DefaultMaxAttempts, 25)
	c.PollInterval = cmp.Or(c.PollInterval, time.Second)
	c.LeaseDuration = cmp.Or(c.LeaseDuration, 15*time.Second)
	c.CompletedRetention = cmp.Or(c.CompletedRetention, 24*time.Hour)
	c.DiscardedRetention = cmp.Or(c.DiscardedRetention, 7*24*time.Hour)
	c.IdempotencyWindow = cmp.Or(c.IdempotencyWindow, 24*time.Hour)
	c.MaintenanceInterval = cmp.Or(c.MaintenanceInterval, time.Minute)
	c.StatsInterval = cmp.Or(c.StatsInterval, 10*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	return c
}

func (c Config) validate() error {
	for _, v := range []struct {
		name string
		bad  bool
	}{
		{"Workers", c.Workers < 0},
		{"StoreLoops", c.StoreLoops < 0},
		{"MaxPayloadBytes", c.MaxPayloadBytes < 0},
		{"MaxKeyBytes", c.MaxKeyBytes < 0},
		{"DefaultMaxAttempts", c.DefaultMaxAttempts < 0},
		{"PollInterval", c.PollInterval < 0},
		{"LeaseDuration", c.LeaseDuration < 0},
		{"IdempotencyWindow", c.IdempotencyWindow < 0},
		{"MaintenanceInterval", c.MaintenanceInterval < 0},
		{"StatsInterval", c.StatsInterval < 0},
	} {
		if v.bad {
			return fmt.Errorf("herald: config: %s must not be negative", v.name)
		}
	}
	if c.LeaseDuration > 0 && c.LeaseDuration < 100*time.Millisecond {
		return fmt.Errorf("herald: config: LeaseDuration must be at least 100ms, got %s", c.LeaseDuration)
	}
	return nil
}

// DiscardPolicy says what happens to a key's line when one of its jobs is
// discarded (dead-lettered).
type DiscardPolicy int

const (
	// DiscardContinue lets the key's next job run. The default.
	DiscardContinue DiscardPolicy = iota
	// DiscardBlock keeps the dead letter at the head of its key's line: the
	// key waits until an operator retries or cancels it.
	DiscardBlock
)

// KindConfig is one kind's policy. Zero fields take the documented defaults.
type KindConfig struct {
	// Concurrency caps this kind's running jobs. Defaults to Config.Workers.
	Concurrency int
	// Timeout bounds one attempt through its context; a timed-out attempt is
	// a failure. Defaults to none.
	Timeout time.Duration
	// MaxAttempts is the default for jobs of this kind enqueued without one.
	// Defaults to Config.DefaultMaxAttempts.
	MaxAttempts int
	// BackoffBase is the delay after the first failure; it doubles with
	// each attempt, ±25% jitter. Defaults to 1s.
	BackoffBase time.Duration
	// BackoffCap caps the backoff delay. Defaults to 1h.
	BackoffCap time.Duration
	// OnDiscard decides whether the key continues after a dead letter.
	// Defaults to DiscardContinue.
	OnDiscard DiscardPolicy
}

// Handler runs one attempt of a job. Returning nil completes the job; an
// error fails the attempt (see Permanent and RetryAfter). The context is
// cancelled on the kind's timeout and when a stop deadline passes.
type Handler interface {
	Work(ctx context.Context, job *Job) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, job *Job) error

// Work calls f.
func (f HandlerFunc) Work(ctx context.Context, job *Job) error { return f(ctx, job) }
