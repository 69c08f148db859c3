package herald

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/heraldmq/herald/internal/engine"
	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/sqlite"
)

// Client enqueues jobs and runs them through registered handlers.
type Client struct {
	cfg       Config
	drv       store.Driver
	ownsStore bool

	nloops int // store loops to run (Config.StoreLoops resolved)

	mu     sync.Mutex
	kinds  map[string]engine.Kind
	engs   []*engine.Engine // the store loops; nil until Start
	next   atomic.Uint64    // round-robin over engs for unordered enqueues
	routes keyRoutes        // which loop recent keys went through
	closed bool
}

// New validates cfg and opens the store. Register handlers, then Start.
func New(cfg Config) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, drv: cfg.Store, kinds: map[string]engine.Kind{}}
	if c.drv == nil {
		s, err := sqlite.Open(context.Background(), filepath.Join(cfg.DataDir, "herald.db"), sqlite.Options{})
		if err != nil {
			return nil, fmt.Errorf("herald: open store: %w", err)
		}
		c.drv, c.ownsStore = s, true
	}
	n, err := loops(cfg, c.drv)
	if err != nil {
		if c.ownsStore {
			_ = c.drv.Close()
		}
		return nil, err
	}
	c.nloops = n
	return c, nil
}

// Register adds a kind with its handler and policy. Call it before Start.
func (c *Client) Register(kind string, h Handler, kc KindConfig) error {
	if kind == "" || len(kind) > 128 || !utf8.ValidString(kind) {
		return fieldErr(ErrInvalidJob, "kind", "must be 1 to 128 bytes of UTF-8")
	}
	if h == nil {
		return fieldErr(ErrInvalidJob, "handler", "must not be nil")
	}
	if kc.Concurrency < 0 || kc.Timeout < 0 || kc.MaxAttempts < 0 || kc.BackoffBase < 0 || kc.BackoffCap < 0 {
		return fmt.Errorf("herald: kind %q: negative setting", kind)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.engs != nil {
		return fmt.Errorf("herald: register %q: client already started", kind)
	}
	if _, dup := c.kinds[kind]; dup {
		return fmt.Errorf("herald: kind %q registered twice", kind)
	}
	c.kinds[kind] = engine.Kind{
		Handler:           h.Work,
		Concurrency:       kc.Concurrency,
		Timeout:           kc.Timeout,
		MaxAttempts:       max(kc.MaxAttempts, 0),
		BackoffBase:       kc.BackoffBase,
		BackoffCap:        kc.BackoffCap,
		BlockKeyOnDiscard: kc.OnDiscard == DiscardBlock,
	}
	if c.kinds[kind].MaxAttempts == 0 {
		k := c.kinds[kind]
		k.MaxAttempts = c.cfg.DefaultMaxAttempts
		c.kinds[kind] = k
	}
	return nil
}

// Start begins running jobs. It returns at once.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrStopped
	}
	if c.engs != nil {
		return errors.New("herald: client already started")
	}
	loops, cfg := c.nloops, c.cfg
	var engs []*engine.Engine
	for i := range loops {
		owner, statsEvery := cfg.NodeName, cfg.StatsInterval
		if i > 0 {
			if owner != "" {
				// Each loop holds its own leases, so it needs its own name.
				owner = fmt.Sprintf("%s#%d", owner, i+1)
			}
			statsEvery = -1 // the first loop's snapshot serves Metrics
		}
		eng, err := engine.New(engine.Config{
			Store: c.drv, Kinds: shareKinds(c.kinds, i, loops), Workers: share(cfg.Workers, i, loops),
			Owner: owner, Clock: cfg.Clock, Logger: cfg.Logger,
			PollInterval: cfg.PollInterval, LeaseDuration: cfg.LeaseDuration,
			MaintenanceEvery: cfg.MaintenanceInterval, StatsEvery: statsEvery,
			CompletedRetention: cfg.CompletedRetention, DiscardedRetention: cfg.DiscardedRetention,
			IdempotencyWindow: cfg.IdempotencyWindow, OnAttempt: cfg.OnAttempt,
		})
		if err == nil {
			err = eng.Start()
		}
		if err != nil {
			for _, started := range engs {
				_ = started.Stop(context.Background())
			}
			return fmt.Errorf("herald: %w", err)
		}
		engs = append(engs, eng)
	}
	c.engs = engs
	return nil
}

// loops returns how many store loops a client runs: Config.StoreLoops, or
// the driver's preference, and never more than Workers (each loop needs a
// worker slot of its own).
func loops(cfg Config, drv store.Driver) (int, error) {
	pl, parallel := drv.(store.ParallelLoops)
	n := 1
	switch {
	case cfg.StoreLoops > 1 && !parallel:
		return 0, fmt.Errorf("herald: config: StoreLoops is %d, but the store runs one loop only", cfg.StoreLoops)
	case cfg.StoreLoops > 0:
		n = cfg.StoreLoops
	case parallel:
		n = max(pl.PreferredLoops(), 1)
	}
	return min(n, cfg.Workers), nil
}

// share is loop i's part of n split over loops: as even as it goes, the
// first loops taking the remainder, so the parts add up to n.
func share(n, i, loops int) int {
	s := n / loops
	if i < n%loops {
		s++
	}
	return s
}

// shareKinds gives loop i its part of each kind's Concurrency (the cap of
// a kind without one is the loop's Workers). A loop whose part is 0 leaves
// the kind out: it never claims it. Loop 0 always has every kind.
func shareKinds(kinds map[string]engine.Kind, i, loops int) map[string]engine.Kind {
	if loops == 1 {
		return kinds
	}
	out := make(map[string]engine.Kind, len(kinds))
	for name, k := range kinds {
		if k.Concurrency > 0 {
			k.Concurrency = share(k.Concurrency, i, loops)
			if k.Concurrency == 0 {
				continue
			}
		}
		out[name] = k
	}
	return out
}

// Drain stops starting jobs, for good, while enqueues are still taken and
// running jobs go on: the first step of a graceful shutdown, taken when the
// signal arrives, while a service still answers the requests in flight.
// Stop completes the shutdown. Drain on a client that is not running does
// nothing.
func (c *Client) Drain() {
	engs, _ := c.engines()
	for _, eng := range engs {
		eng.Drain()
	}
}

// Stop stops taking work and waits for running jobs until ctx is done; then
// it interrupts them and returns them to their lines without consuming an
// attempt. Jobs are never left running after Stop returns. If the client
// opened its own store, Stop closes it.
func (c *Client) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	engs := c.engs
	c.mu.Unlock()
	// The loops stop side by side: each waits for its running jobs until
	// ctx is done.
	stopErrs := make([]error, len(engs))
	var wg sync.WaitGroup
	for i, eng := range engs {
		wg.Go(func() { stopErrs[i] = eng.Stop(ctx) })
	}
	wg.Wait()
	errs := append([]error(nil), stopErrs...)
	if c.ownsStore {
		errs = append(errs, c.drv.Close())
	}
	return errors.Join(errs...)
}

// engines returns the store loops; the first has every kind.
func (c *Client) engines() ([]*engine.Engine, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.engs == nil {
		if c.closed {
			return nil, ErrStopped
		}
		return nil, ErrNotStarted
	}
	return c.engs, nil
}

// EnqueueParams describes a job to enqueue.
type EnqueueParams struct {
	// Kind names the registered handler. Required.
	Kind string
	// Key orders jobs: jobs with the same key run one at a time in order.
	// Empty means unordered.
	Key string
	// Payload is the job's data: json.RawMessage or []byte holding JSON are
	// stored as is; anything else is marshaled to JSON. Nil stores null.
	Payload any
	// RunAt schedules the job; zero means now.
	RunAt time.Time
	// Delay schedules the job this long from now (ignored if RunAt is set).
	Delay time.Duration
	// MaxAttempts overrides the kind's default.
	MaxAttempts int
	// IdempotencyKey, when set, makes enqueueing safe to repeat: within
	// Config.IdempotencyWindow the existing job is returned instead.
	IdempotencyKey string
}

// InsertResult is the outcome of one enqueue.
type InsertResult struct {
	Job *Job
	// Existing is true when IdempotencyKey matched an earlier job, which is
	// returned in Job; nothing new was stored.
	Existing bool
}

// Enqueue stores one job durably: when it returns nil the job is on disk.
// Concurrent calls are committed together (one transaction, one fsync).
func (c *Client) Enqueue(ctx context.Context, p EnqueueParams) (*InsertResult, error) {
	res, err := c.EnqueueMany(ctx, []EnqueueParams{p})
	if err != nil {
		if fe, ok := errors.AsType[*FieldError](err); ok {
			fe.Field = trimIndex(fe.Field)
		}
		return nil, err
	}
	return &res[0], nil
}

// EnqueueMany stores jobs in one transaction: all or none. Field errors
// name the offending job as jobs[i].field.
func (c *Client) EnqueueMany(ctx context.Context, ps []EnqueueParams) ([]InsertResult, error) {
	engs, err := c.engines()
	if err != nil {
		return nil, err
	}
	eng := engs[0]
	if len(ps) == 0 {
		return nil, nil
	}
	now := c.cfg.Clock.Now()
	params := make([]store.InsertParams, len(ps))
	for i, p := range ps {
		ip, err := c.validate(eng, p, now)
		if err != nil {
			if fe, ok := errors.AsType[*FieldError](err); ok {
				fe.Field = fmt.Sprintf("jobs[%d].%s", i, fe.Field)
			}
			return nil, err
		}
		params[i] = ip
	}
	if len(engs) > 1 {
		eng = engs[c.routes.route(ps, len(engs), &c.next)]
	}
	res, err := eng.Insert(ctx, params)
	if err != nil {
		return nil, fmt.Errorf("herald: enqueue: %w", err)
	}
	out := make([]InsertResult, len(res))
	for i, r := range res {
		out[i] = InsertResult{Job: r.Job, Existing: r.Existing}
	}
	return out, nil
}

func trimIndex(field string) string {
	for i := 0; i < len(field); i++ {
		if field[i] == '.' {
			return field[i+1:]
		}
	}
	return field
}

// validate checks p and turns it into store parameters.
func (c *Client) validate(eng *engine.Engine, p EnqueueParams, now time.Time) (store.InsertParams, error) {
	if p.Kind == "" {
		return store.InsertParams{}, fieldErr(ErrInvalidJob, "kind", "is required")
	}
	k, ok := eng.Kind(p.Kind)
	if !ok {
		return store.InsertParams{}, fieldErr(ErrUnknownKind, "kind", "no handler registered for kind %q", p.Kind)
	}
	if len(p.Key) > c.cfg.MaxKeyBytes {
		return store.InsertParams{}, fieldErr(ErrInvalidJob, "key", "is %d bytes; the limit is %d", len(p.Key), c.cfg.MaxKeyBytes)
	}
	if !utf8.ValidString(p.Key) {
		return store.InsertParams{}, fieldErr(ErrInvalidJob, "key", "must be valid UTF-8")
	}
	if len(p.IdempotencyKey) > 256 || !utf8.ValidString(p.IdempotencyKey) {
		return store.InsertParams{}, fieldErr(ErrInvalidJob, "idempotency_key", "must be at most 256 bytes of UTF-8")
	}
	if p.MaxAttempts < 0 {
		return store.InsertParams{}, fieldErr(ErrInvalidJob, "max_attempts", "must not be negative")
	}
	if p.Delay < 0 {
		return store.InsertParams{}, fieldErr(ErrInvalidJob, "delay", "must not be negative")
	}
	payload, err := encodePayload(p.Payload)
	if err != nil {
		return store.InsertParams{}, fieldErr(ErrInvalidJob, "payload", "%v", err)
	}
	if len(payload) > c.cfg.MaxPayloadBytes {
		return store.InsertParams{}, fieldErr(ErrPayloadTooLarge, "payload", "is %d bytes; the limit is %d", len(payload), c.cfg.MaxPayloadBytes)
	}
	runAt := p.RunAt
	if runAt.IsZero() && p.Delay > 0 {
		runAt = now.Add(p.Delay)
	}
	return store.InsertParams{
		Kind: p.Kind, Key: p.Key, Payload: payload, RunAt: runAt,
		MaxAttempts: cmp.Or(p.MaxAttempts, k.MaxAttempts), IdempotencyKey: p.IdempotencyKey,
	}, nil
}

func encodePayload(v any) (json.RawMessage, error) {
	switch p := v.(type) {
	case nil:
		return json.RawMessage("null"), nil
	case json.RawMessage:
		if !json.Valid(p) {
			return nil, errors.New("is not valid JSON")
		}
		return p, nil
	case []byte:
		if !json.Valid(p) {
			return nil, errors.New("is not valid JSON")
		}
		return p, nil
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("cannot be encoded as JSON: %w", err)
		}
		return b, nil
	}
}

// Get returns a job by id.
func (c *Client) Get(ctx context.Context, id int64) (*Job, error) { return c.drv.Get(ctx, id) }

// ListParams filters List; zero values match everything.
type ListParams = store.ListParams

// List returns jobs in id order, after p.AfterID.
func (c *Client) List(ctx context.Context, p ListParams) ([]*Job, error) {
	if p.State != "" && !p.State.Valid() {
		return nil, fieldErr(ErrInvalidJob, "state", "unknown state %q", p.State)
	}
	if p.Now.IsZero() {
		p.Now = c.cfg.Clock.Now()
	}
	return c.drv.List(ctx, p)
}

// Line describes a key's line: pending count and its head job.
func (c *Client) Line(ctx context.Context, key string) (*store.KeyLine, error) {
	return c.drv.Line(ctx, key)
}

// Retry makes a discarded, cancelled or waiting job run again now with a
// fresh set of attempts.
func (c *Client) Retry(ctx context.Context, id int64) (*Job, error) {
	j, err := c.drv.Retry(ctx, id, c.cfg.Clock.Now())
	if err == nil {
		c.wake()
	}
	return j, err
}

// Cancel cancels a job that has not started, or a dead letter blocking its
// key; the key's line then advances.
func (c *Client) Cancel(ctx context.Context, id int64) (*Job, error) {
	j, err := c.drv.Cancel(ctx, id, c.cfg.Clock.Now())
	if err == nil {
		c.wake()
	}
	return j, err
}

func (c *Client) wake() {
	engs, _ := c.engines()
	for _, eng := range engs {
		eng.Signal()
	}
}

// Pause stops starting jobs of kind on this client; running ones finish.
func (c *Client) Pause(kind string) error { return c.setPaused(kind, true) }

// Resume undoes Pause.
func (c *Client) Resume(kind string) error { return c.setPaused(kind, false) }

func (c *Client) setPaused(kind string, paused bool) error {
	engs, err := c.engines()
	if err != nil {
		return err
	}
	if !engs[0].HasKind(kind) {
		return fieldErr(ErrUnknownKind, "kind", "no handler registered for kind %q", kind)
	}
	for _, eng := range engs {
		if eng.HasKind(kind) {
			if err := eng.Pause(kind, paused); err != nil {
				return fmt.Errorf("herald: pause %q: %w", kind, err)
			}
		}
	}
	return nil
}

// Stats returns a fresh snapshot of the store's contents. It scans the
// store; for frequent polling use the engine's periodic snapshot (Metrics).
func (c *Client) Stats(ctx context.Context) (*store.Stats, error) {
	return c.drv.Stats(ctx, c.cfg.Clock.Now())
}

// Metrics is a snapshot of the engine's counters since start and its latest
// periodic store snapshot.
type Metrics struct {
	Enqueued, Started, Completed, Failed, Discarded, Released, Fenced, Pruned int64
	// Running is the number of attempts running now.
	Running int
	// ByKind holds per-kind counters.
	ByKind map[string]KindMetrics
	// Store is the latest periodic store snapshot; nil before the first.
	Store *store.Stats
}

// KindMetrics are one kind's counters.
type KindMetrics struct {
	Enqueued, Started, Completed, Failed, Discarded int64
	Paused                                          bool
}

// Metrics returns the engine's counters. It does not touch the store.
func (c *Client) Metrics() (Metrics, error) {
	engs, err := c.engines()
	if err != nil {
		return Metrics{}, err
	}
	out := Metrics{ByKind: map[string]KindMetrics{}, Store: engs[0].LastStats()}
	for _, eng := range engs {
		m := eng.Metrics()
		out.Enqueued += m.Enqueued.Load()
		out.Started += m.Started.Load()
		out.Completed += m.Completed.Load()
		out.Failed += m.Failed.Load()
		out.Discarded += m.Discarded.Load()
		out.Released += m.Released.Load()
		out.Fenced += m.Fenced.Load()
		out.Pruned += m.Pruned.Load()
		out.Running += eng.Running()
		for kind := range c.kinds {
			km, sum := m.Kind(kind), out.ByKind[kind]
			sum.Enqueued += km.Enqueued.Load()
			sum.Started += km.Started.Load()
			sum.Completed += km.Completed.Load()
			sum.Failed += km.Failed.Load()
			sum.Discarded += km.Discarded.Load()
			sum.Paused = engs[0].Paused(kind)
			out.ByKind[kind] = sum
		}
	}
	return out, nil
}

// StoreLoops returns how many store loops the client runs (Config.StoreLoops
// as resolved against the store).
func (c *Client) StoreLoops() int { return c.nloops }

// Ping checks that the store answers.
func (c *Client) Ping(ctx context.Context) error { return c.drv.Ping(ctx) }
