// Package engine runs jobs: it group-commits enqueues, claims ready line
// heads from the store into worker slots, runs handlers with timeouts and
// retries, group-commits outcomes, and does maintenance (lease renewal,
// rescue, retention).
//
// Data flow, one job:
//
//	Insert ─► committer ─(InsertMany, one fsync per group)─► store
//	store ─(Claim: ready heads, up to free slots)─► dispatcher ─► worker goroutine
//	worker ─► finisher ─(FinishMany: outcome + next head promoted)─► store ─► wake dispatcher
//
// Per-key order lives in the store (only line heads are claimable), so the
// engine holds only what is running: memory does not grow with the backlog.
package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldmq/herald/clock"
	"github.com/heraldmq/herald/store"
)

// Sentinel errors.
var (
	// ErrStopped means the engine is stopping or stopped and takes no work.
	ErrStopped = errors.New("engine stopped")
	// errStopping cancels handler contexts when Stop's deadline passes.
	errStopping = errors.New("engine stopping: attempt interrupted")
	// errTimeout cancels a handler context when its kind's timeout passes.
	errTimeout = errors.New("handler timeout")
)

// HandlerFunc runs one attempt of a job.
type HandlerFunc func(ctx context.Context, job *store.Job) error

// Kind is a registered job kind: its handler and policies.
type Kind struct {
	Handler HandlerFunc
	// Concurrency caps this kind's running jobs. 0 means the global limit.
	Concurrency int
	// Timeout bounds one attempt; 0 means none.
	Timeout time.Duration
	// MaxAttempts is the default for jobs enqueued without one.
	MaxAttempts int
	// BackoffBase and BackoffCap shape exponential backoff between attempts.
	BackoffBase, BackoffCap time.Duration
	// BlockKeyOnDiscard keeps a dead letter at the head of its key's line.
	BlockKeyOnDiscard bool
}

// Config configures an Engine. New fills defaults for zero fields.
type Config struct {
	Store   store.Driver
	Kinds   map[string]Kind
	Workers int
	// Owner prefixes the lease owner name; New appends a random suffix
	// (see Engine.Owner). Defaults to "node".
	Owner string

	Clock  clock.Clock
	Logger *slog.Logger

	PollInterval     time.Duration
	LeaseDuration    time.Duration
	MaintenanceEvery time.Duration
	// RescueEvery is how often expired leases are looked for, so a dead
	// node's work resumes soon after its lease ends. Default 1s.
	RescueEvery time.Duration
	// StatsEvery is how often the store's statistics are refreshed for
	// LastStats. Default 10s; negative never (a client's extra store loops
	// leave them to its first). A refresh that takes longer than a 50th of
	// it spaces the next one out (statsSpacing).
	StatsEvery         time.Duration
	CompletedRetention time.Duration
	DiscardedRetention time.Duration
	IdempotencyWindow  time.Duration
	// MaxBatch caps rows per group-commit transaction. Defaults to 16,000:
	// a cycle's cost is mostly the index pages it dirties (about one per
	// key it touches), so under a flood larger cycles write far fewer pages
	// per job; a cycle of 16,000 rows still commits in tens of milliseconds.
	// Only a flood fills it (32 connections posting batches of 1,000), and
	// there 16,000 made 12-25 % more jobs/s than 8,000 (docs/benchmarks.md).
	MaxBatch int
	// CommitDelay is how long a cycle with inserts waits for more before
	// it commits, when the previous cycle carried at least 16 insert
	// requests (many producers enqueueing a job or a few at a time). One
	// commit then acknowledges more of them: with 256 connections each
	// posting single jobs, 100µs gave 14-17 % more requests per second on
	// SQLite (before its flushes overlapped the next cycle; since, no
	// difference) and 11 % on PostgreSQL, for less CPU. A lone producer
	// never waits. Defaults to 100µs; negative turns it off.
	CommitDelay time.Duration
	// OnAttempt, if set, is called after each attempt's outcome is recorded
	// (e.g. to feed a duration histogram). It must be fast.
	OnAttempt func(kind string, outcome store.Outcome, d time.Duration)
}

// Engine runs jobs. Create with New, then Start and Stop once each.
type Engine struct {
	cfg   Config
	drv   store.Driver
	clk   clock.Clock
	log   *slog.Logger
	kinds map[string]*kindState
	order []string // kind names; claim order rotates for fairness

	enqueue chan *insertRequest
	finish  chan finishRequest
	wake    chan struct{}

	running  atomic.Int64 // attempts running now
	stopping atomic.Bool
	draining atomic.Bool // no job starts any more; enqueues are still taken
	started  atomic.Bool
	// gate orders Insert's send on enqueue before Stop closes it.
	gate sync.RWMutex

	rootCtx    context.Context // cancelled when Stop completes
	rootCancel context.CancelFunc
	workCtx    context.Context // handler contexts derive from this
	workCancel context.CancelCauseFunc
	maintDone  chan struct{}
	listenDone chan struct{}
	// claimsStopped is closed by the store loop once it has seen Stop and
	// will claim nothing more.
	claimsStopped chan struct{}
	loopDone      chan struct{} // closed when the store loop has written everything
	workers       sync.WaitGroup
	acks          sync.WaitGroup // answers waiting for their commit's sync

	metrics Metrics
	stats   atomic.Pointer[store.Stats]
	leases  leases

	// known maps each job this engine claimed, until its outcome is
	// written, to its lease token; doubtful is set after a commit whose
	// outcome is unknown (see reconcile). Both belong to the store loop.
	known    map[int64]int64
	doubtful bool
}

type kindState struct {
	name string
	Kind
	running int // owned by the store loop
	paused  atomic.Bool
}

// New validates cfg and returns an engine ready to Start.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("engine: Store is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1000
	}
	// Every engine claims under a name of its own, even when the node's
	// name is stable: renewals extend every running job of the owner, so a
	// process restarted under its predecessor's name would keep the dead
	// process's jobs leased forever, never rescued and never run.
	cfg.Owner = fmt.Sprintf("%s-%08x", cmp.Or(cfg.Owner, "node"), rand.Uint32())
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	if cfg.MaintenanceEvery <= 0 {
		cfg.MaintenanceEvery = time.Minute
	}
	if cfg.StatsEvery == 0 {
		cfg.StatsEvery = 10 * time.Second
	}
	if cfg.RescueEvery <= 0 {
		cfg.RescueEvery = min(time.Second, cfg.LeaseDuration/4)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 16000
	}
	if cfg.CommitDelay == 0 {
		cfg.CommitDelay = 100 * time.Microsecond
	}
	e := &Engine{
		cfg:     cfg,
		drv:     cfg.Store,
		clk:     cfg.Clock,
		log:     cfg.Logger,
		kinds:   map[string]*kindState{},
		enqueue: make(chan *insertRequest, 4096),
		finish:  make(chan finishRequest, 4096),
		wake:    make(chan struct{}, 1),
		known:   map[int64]int64{},
	}
	for name, k := range cfg.Kinds {
		if k.Handler == nil {
			return nil, fmt.Errorf("engine: kind %q: Handler is required", name)
		}
		if k.Concurrency <= 0 || k.Concurrency > cfg.Workers {
			k.Concurrency = cfg.Workers
		}
		e.kinds[name] = &kindState{name: name, Kind: k}
		e.order = append(e.order, name)
	}
	e.rootCtx, e.rootCancel = context.WithCancel(context.Background())
	e.workCtx, e.workCancel = context.WithCancelCause(context.Background())
	return e, nil
}

// Owner is the lease owner name this engine claims jobs under.
func (e *Engine) Owner() string { return e.cfg.Owner }

// Metrics returns the engine's live counters.
func (e *Engine) Metrics() *Metrics { return &e.metrics }

// LastStats returns the most recent periodic store snapshot (nil before the
// first one).
func (e *Engine) LastStats() *store.Stats { return e.stats.Load() }

// Start launches the engine's loops. It returns at once.
func (e *Engine) Start() error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("engine: already started")
	}
	e.loopDone = make(chan struct{})
	e.maintDone = make(chan struct{})
	e.claimsStopped = make(chan struct{})
	go e.run()
	go e.maintainLoop()
	e.listenDone = make(chan struct{})
	go e.listen()
	return nil
}

// Stop stops taking work, waits for running jobs until ctx is done, then
// interrupts the rest and returns them to their lines without consuming an
// attempt. Every outcome is written before Stop returns.
func (e *Engine) Stop(ctx context.Context) error {
	if !e.started.Load() {
		return nil
	}
	e.gate.Lock()
	if !e.stopping.CompareAndSwap(false, true) {
		e.gate.Unlock()
		return errors.New("engine: already stopping")
	}
	close(e.enqueue) // the store loop commits what was submitted; no new claims
	e.gate.Unlock()
	e.signal()
	<-e.claimsStopped // from here on no worker starts
	done := make(chan struct{})
	go func() { e.workers.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		e.workCancel(errStopping)
		<-done
		err = fmt.Errorf("engine: stop: %w (running jobs were interrupted and released)", ctx.Err())
	}
	close(e.finish) // no worker is left to send
	<-e.loopDone
	e.acks.Wait()
	e.rootCancel()
	<-e.maintDone
	<-e.listenDone
	e.workCancel(errStopping)
	return err
}

// Drain stops starting jobs, for good: running jobs go on and enqueues are
// still taken. It is the first step of a graceful shutdown (stop starting
// work at once, while the service still answers requests in flight); Stop
// completes it.
func (e *Engine) Drain() {
	e.draining.Store(true)
	e.signal()
}

// claimsOff reports whether the engine may start no more jobs.
func (e *Engine) claimsOff() bool { return e.stopping.Load() || e.draining.Load() }

// Pause stops claiming jobs of kind; running ones finish.
func (e *Engine) Pause(kind string, paused bool) error {
	k, ok := e.kinds[kind]
	if !ok {
		return fmt.Errorf("engine: unknown kind %q", kind)
	}
	k.paused.Store(paused)
	if !paused {
		e.signal()
	}
	return nil
}

// Paused reports whether kind is paused.
func (e *Engine) Paused(kind string) bool {
	k, ok := e.kinds[kind]
	return ok && k.paused.Load()
}

// HasKind reports whether kind is registered.
func (e *Engine) HasKind(kind string) bool { _, ok := e.kinds[kind]; return ok }

// Kind returns the registered settings of kind.
func (e *Engine) Kind(kind string) (Kind, bool) {
	k, ok := e.kinds[kind]
	if !ok {
		return Kind{}, false
	}
	return k.Kind, true
}

// Signal wakes the dispatcher, e.g. after another process enqueued.
func (e *Engine) Signal() { e.signal() }

func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// backoff returns the delay before attempt+1: exponential from base, capped,
// with ±25% jitter so retries of many jobs spread out.
func backoff(attempt int, base, ceiling time.Duration) time.Duration {
	if base <= 0 {
		base = time.Second
	}
	if ceiling <= 0 {
		ceiling = time.Hour
	}
	d := base
	for i := 1; i < attempt && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	jitter := time.Duration(rand.Int64N(int64(d)/2 + 1))
	return d - d/4 + jitter
}

func panicError(v any) error {
	return fmt.Errorf("panic: %v\n%s", v, debug.Stack())
}
