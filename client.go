package herald

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
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

	mu     sync.Mutex
	kinds  map[string]engine.Kind
	eng    *engine.Engine
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
	if c.eng != nil {
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
	if c.eng != nil {
		return errors.New("herald: client already started")
	}
	cfg := c.cfg
	eng, err := engine.New(engine.Config{
		Store: c.drv, Kinds: c.kinds, Workers: cfg.Workers, Owner: cfg.NodeName,
		Clock: cfg.Clock, Logger: cfg.Logger,
		PollInterval: cfg.PollInterval, LeaseDuration: cfg.LeaseDuration,
		MaintenanceEvery: cfg.MaintenanceInterval, StatsEvery: cfg.StatsInterval,
		CompletedRetention: cfg.CompletedRetention, DiscardedRetention: cfg.DiscardedRetention,
		IdempotencyWindow: cfg.IdempotencyWindow, OnAttempt: cfg.OnAttempt,
	})
	if err != nil {
		return fmt.Errorf("herald: %w", err)
	}
	if err := eng.Start(); err != nil {
		return fmt.Errorf("herald: %w", err)
	}
	c.eng = eng
	return nil
}

// Drain stops starting jobs, for good, while enqueues are still taken and
// running jobs go on: the first step of a graceful shutdown, taken when the
// signal arrives, while a service still answers the requests in flight.
// Stop completes the shutdown. Drain on a client that is not running does
// nothing.
func (c *Client) Drain() {
	if eng, err := c.engine(); err == nil {
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
	eng := c.eng
	c.mu.Unlock()
	var errs []error
	if eng != nil {
		errs = append(errs, eng.Stop(ctx))
	}
	if c.ownsStore {
		errs = append(errs, c.drv.Close())
	}
	return errors.Join(errs...)
}

func (c *Client) engine() (*engine.Engine, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.eng == nil {
		if c.closed {
			return nil, ErrStopped
		}
		return nil, ErrNotStarted
	}
	return c.eng, nil
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
	eng, err := c.engine()
	if err != nil {
		return nil, err
	}
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
	if eng, err := c.engine(); err == nil {
		eng.Signal()
	}
}

// Pause stops starting jobs of kind on this client; running ones finish.
func (c *Client) Pause(kind string) error { return c.setPaused(kind, true) }

// Resume undoes Pause.
func (c *Client) Resume(kind string) error { return c.setPaused(kind, false) }

func (c *Client) setPaused(kind string, paused bool) error {
	eng, err := c.engine()
	if err != nil {
		return err
	}
	if err := eng.Pause(kind, paused); err != nil {
		return fieldErr(ErrUnknownKind, "kind", "no handler registered for kind %q", kind)
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
	eng, err := c.engine()
	if err != nil {
		return Metrics{}, err
	}
	m := eng.Metrics()
	out := Metrics{
		Enqueued: m.Enqueued.Load(), Started: m.Started.Load(), Completed: m.Completed.Load(),
		Failed: m.Failed.Load(), Discarded: m.Discarded.Load(), Released: m.Released.Load(),
		Fenced: m.Fenced.Load(), Pruned: m.Pruned.Load(),
		Running: eng.Running(), ByKind: map[string]KindMetrics{}, Store: eng.LastStats(),
	}
	for kind := range c.kinds {
		km := m.Kind(kind)
		out.ByKind[kind] = KindMetrics{
			Enqueued: km.Enqueued.Load(), Started: km.Started.Load(), Completed: km.Completed.Load(),
			Failed: km.Failed.Load(), Discarded: km.Discarded.Load(), Paused: eng.Paused(kind),
		}
	}
	return out, nil
}

// Ping checks that the store answers.
func (c *Client) Ping(ctx context.Context) error { return c.drv.Ping(ctx) }
