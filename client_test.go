package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/store"
)

func noop(context.Context, *herald.Job) error { return nil }

func TestConfigValidation(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		mutate  func(c *herald.Config)
		wantErr string // substring; "" means valid
	}{
		{"Defaults", func(*herald.Config) {}, ""},
		{"NegativeWorkers", func(c *herald.Config) { c.Workers = -1 }, "Workers"},
		{"NegativeMaxPayloadBytes", func(c *herald.Config) { c.MaxPayloadBytes = -1 }, "MaxPayloadBytes"},
		{"NegativeMaxKeyBytes", func(c *herald.Config) { c.MaxKeyBytes = -1 }, "MaxKeyBytes"},
		{"NegativeDefaultMaxAttempts", func(c *herald.Config) { c.DefaultMaxAttempts = -1 }, "DefaultMaxAttempts"},
		{"NegativePollInterval", func(c *herald.Config) { c.PollInterval = -time.Second }, "PollInterval"},
		{"NegativeLeaseDuration", func(c *herald.Config) { c.LeaseDuration = -time.Second }, "LeaseDuration"},
		{"TinyLeaseDuration", func(c *herald.Config) { c.LeaseDuration = time.Millisecond }, "LeaseDuration"},
		{"NegativeIdempotencyWindow", func(c *herald.Config) { c.IdempotencyWindow = -time.Second }, "IdempotencyWindow"},
		{"NegativeMaintenanceInterval", func(c *herald.Config) { c.MaintenanceInterval = -time.Second }, "MaintenanceInterval"},
		{"NegativeStatsInterval", func(c *herald.Config) { c.StatsInterval = -time.Second }, "StatsInterval"},
		{"NegativeRetentionKeepsForever", func(c *herald.Config) { c.CompletedRetention = -1; c.DiscardedRetention = -1 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			tt.mutate(&cfg)
			c, err := herald.New(cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				stopClient(t, c)
				return
			}
			if err == nil {
				stopClient(t, c)
				t.Fatalf("New accepted an invalid config; want an error naming %s", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New error %q does not name field %s", err, tt.wantErr)
			}
		})
	}
}

func TestConfigWithDefaults(t *testing.T) {
	t.Parallel()
	c := herald.Config{}.WithDefaults()
	if c.DataDir != "./herald-data" || c.Workers != 1000 || c.MaxPayloadBytes != 1<<20 || c.MaxKeyBytes != 512 ||
		c.DefaultMaxAttempts != 25 || c.PollInterval != time.Second || c.LeaseDuration != 15*time.Second ||
		c.CompletedRetention != 24*time.Hour || c.DiscardedRetention != 7*24*time.Hour ||
		c.IdempotencyWindow != 24*time.Hour || c.MaintenanceInterval != time.Minute ||
		c.StatsInterval != 10*time.Second || c.Logger == nil || c.Clock == nil {
		t.Errorf("WithDefaults() = %+v; some field lacks its documented default", c)
	}
	// Set fields are kept.
	if got := (herald.Config{Workers: 7}).WithDefaults().Workers; got != 7 {
		t.Errorf("WithDefaults overwrote Workers: got %d, want 7", got)
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		kind    string
		h       herald.Handler
		kc      herald.KindConfig
		wantErr bool
	}{
		{"OK", "email", herald.HandlerFunc(noop), herald.KindConfig{}, false},
		{"EmptyKind", "", herald.HandlerFunc(noop), herald.KindConfig{}, true},
		{"LongKind", strings.Repeat("k", 129), herald.HandlerFunc(noop), herald.KindConfig{}, true},
		{"InvalidUTF8Kind", "\xff", herald.HandlerFunc(noop), herald.KindConfig{}, true},
		{"NilHandler", "email", nil, herald.KindConfig{}, true},
		{"NegativeConcurrency", "email", herald.HandlerFunc(noop), herald.KindConfig{Concurrency: -1}, true},
		{"NegativeTimeout", "email", herald.HandlerFunc(noop), herald.KindConfig{Timeout: -1}, true},
		{"NegativeMaxAttempts", "email", herald.HandlerFunc(noop), herald.KindConfig{MaxAttempts: -1}, true},
		{"NegativeBackoff", "email", herald.HandlerFunc(noop), herald.KindConfig{BackoffBase: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, testConfig(t))
			err := c.Register(tt.kind, tt.h, tt.kc)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Register error = %v, want error: %v", err, tt.wantErr)
			}
		})
	}

	t.Run("Twice", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, testConfig(t))
		mustRegister(t, c, "email", noop, herald.KindConfig{})
		if err := c.Register("email", herald.HandlerFunc(noop), herald.KindConfig{}); err == nil {
			t.Fatal("second Register of the same kind succeeded")
		}
	})
	t.Run("AfterStart", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, testConfig(t))
		mustRegister(t, c, "email", noop, herald.KindConfig{})
		mustStart(t, c)
		if err := c.Register("sms", herald.HandlerFunc(noop), herald.KindConfig{}); err == nil {
			t.Fatal("Register after Start succeeded")
		}
	})
}

func TestLifecycle(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		client *herald.Client
		ran    atomic.Int64
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		b := &testBundle{client: newClient(t, testConfig(t))}
		mustRegister(t, b.client, "k", func(context.Context, *herald.Job) error { b.ran.Add(1); return nil }, herald.KindConfig{})
		return b
	}
	params := herald.EnqueueParams{Kind: "k", Key: "a"}

	t.Run("EnqueueBeforeStart", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if _, err := b.client.Enqueue(t.Context(), params); !errors.Is(err, herald.ErrNotStarted) {
			t.Errorf("Enqueue before Start = %v, want ErrNotStarted", err)
		}
		if _, err := b.client.EnqueueMany(t.Context(), []herald.EnqueueParams{params}); !errors.Is(err, herald.ErrNotStarted) {
			t.Errorf("EnqueueMany before Start = %v, want ErrNotStarted", err)
		}
		if err := b.client.Pause("k"); !errors.Is(err, herald.ErrNotStarted) {
			t.Errorf("Pause before Start = %v, want ErrNotStarted", err)
		}
		if _, err := b.client.Metrics(); !errors.Is(err, herald.ErrNotStarted) {
			t.Errorf("Metrics before Start = %v, want ErrNotStarted", err)
		}
	})
	t.Run("EnqueueAfterStop", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		mustStart(t, b.client)
		stopClient(t, b.client)
		if _, err := b.client.Enqueue(t.Context(), params); !errors.Is(err, herald.ErrStopped) {
			t.Errorf("Enqueue after Stop = %v, want ErrStopped", err)
		}
		if err := b.client.Start(t.Context()); !errors.Is(err, herald.ErrStopped) {
			t.Errorf("Start after Stop = %v, want ErrStopped", err)
		}
		// Stop is idempotent.
		if err := b.client.Stop(t.Context()); err != nil {
			t.Errorf("second Stop = %v, want nil", err)
		}
	})
	t.Run("StopBeforeStart", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		stopClient(t, b.client)
		if err := b.client.Start(t.Context()); !errors.Is(err, herald.ErrStopped) {
			t.Errorf("Start after Stop = %v, want ErrStopped", err)
		}
		if _, err := b.client.Enqueue(t.Context(), params); !errors.Is(err, herald.ErrStopped) {
			t.Errorf("Enqueue on a client stopped before start = %v, want ErrStopped", err)
		}
	})
	t.Run("StartTwice", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		mustStart(t, b.client)
		if err := b.client.Start(t.Context()); err == nil {
			t.Error("second Start succeeded")
		}
	})
	t.Run("Ping", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if err := b.client.Ping(t.Context()); err != nil {
			t.Errorf("Ping: %v", err)
		}
	})
	t.Run("RunsJob", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		mustStart(t, b.client)
		j := mustEnqueue(t, b.client, params)
		got := waitState(t, b.client, j.ID, herald.StateCompleted)
		if got.Attempt != 1 || len(got.Errors) != 0 || got.FinishedAt.IsZero() || got.StartedAt.IsZero() {
			t.Errorf("completed job = %+v; want attempt 1, no errors, start and finish times", got)
		}
		if n := b.ran.Load(); n != 1 {
			t.Errorf("handler ran %d times, want 1", n)
		}
	})
}

func TestEnqueueValidation(t *testing.T) { //nolint:tparallel // subtests share one client and are followed by checks over all of them
	t.Parallel()

	tests := []struct {
		name      string
		p         herald.EnqueueParams
		wantIs    error
		wantField string
	}{
		{"UnknownKind", herald.EnqueueParams{Kind: "nope"}, herald.ErrUnknownKind, "kind"},
		{"EmptyKind", herald.EnqueueParams{}, herald.ErrInvalidJob, "kind"},
		{"PayloadTooLarge", herald.EnqueueParams{Kind: "k", Payload: strings.Repeat("x", 100)}, herald.ErrPayloadTooLarge, "payload"},
		{"InvalidJSONRaw", herald.EnqueueParams{Kind: "k", Payload: json.RawMessage(`{"a":`)}, herald.ErrInvalidJob, "payload"},
		{"InvalidJSONBytes", herald.EnqueueParams{Kind: "k", Payload: []byte("not json")}, herald.ErrInvalidJob, "payload"},
		{"UnencodablePayload", herald.EnqueueParams{Kind: "k", Payload: make(chan int)}, herald.ErrInvalidJob, "payload"},
		{"KeyTooLong", herald.EnqueueParams{Kind: "k", Key: strings.Repeat("k", 33)}, herald.ErrInvalidJob, "key"},
		{"KeyInvalidUTF8", herald.EnqueueParams{Kind: "k", Key: "\xff\xfe"}, herald.ErrInvalidJob, "key"},
		{"IdempotencyKeyTooLong", herald.EnqueueParams{Kind: "k", IdempotencyKey: strings.Repeat("i", 257)}, herald.ErrInvalidJob, "idempotency_key"},
		{"NegativeMaxAttempts", herald.EnqueueParams{Kind: "k", MaxAttempts: -1}, herald.ErrInvalidJob, "max_attempts"},
		{"NegativeDelay", herald.EnqueueParams{Kind: "k", Delay: -time.Second}, herald.ErrInvalidJob, "delay"},
	}

	cfg := testConfig(t)
	cfg.MaxPayloadBytes = 64
	cfg.MaxKeyBytes = 32
	c := newClient(t, cfg)
	var ran atomic.Int64
	mustRegister(t, c, "k", func(context.Context, *herald.Job) error { ran.Add(1); return nil }, herald.KindConfig{})
	mustStart(t, c)

	t.Run("Single", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := c.Enqueue(t.Context(), tt.p)
				if !errors.Is(err, tt.wantIs) {
					t.Fatalf("Enqueue error = %v, want errors.Is %v", err, tt.wantIs)
				}
				if got := fieldOf(err); got != tt.wantField {
					t.Errorf("FieldError.Field = %q, want %q (err %v)", got, tt.wantField, err)
				}
			})
		}
	})
	// In a batch, one bad job rejects the whole batch: nothing is stored,
	// and the error names the job's index.
	t.Run("ManyAllOrNothing", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				batch := []herald.EnqueueParams{
					{Kind: "k", Key: "batch-" + tt.name, Payload: map[string]int{"n": 1}},
					tt.p,
					{Kind: "k", Key: "batch-" + tt.name, Payload: map[string]int{"n": 3}},
				}
				res, err := c.EnqueueMany(t.Context(), batch)
				if !errors.Is(err, tt.wantIs) || res != nil {
					t.Fatalf("EnqueueMany = %v, %v; want nil and errors.Is %v", res, err, tt.wantIs)
				}
				if got, want := fieldOf(err), "jobs[1]."+tt.wantField; got != want {
					t.Errorf("FieldError.Field = %q, want %q", got, want)
				}
			})
		}
	})
	// A valid payload at exactly the limit is accepted.
	t.Run("PayloadAtLimit", func(t *testing.T) {
		raw := json.RawMessage(`"` + strings.Repeat("x", 62) + `"`) // 64 bytes
		if _, err := c.Enqueue(t.Context(), herald.EnqueueParams{Kind: "k", Payload: raw}); err != nil {
			t.Errorf("Enqueue of a %d-byte payload with a 64-byte limit: %v", len(raw), err)
		}
	})
	jobs, err := c.List(t.Context(), herald.ListParams{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 {
		t.Errorf("%d jobs stored, want only the one valid job (rejected batches must store nothing): %+v", len(jobs), jobs)
	}
}

func TestEnqueuePayloadEncoding(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	got := make(chan json.RawMessage, 10)
	mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error { got <- j.Payload; return nil }, herald.KindConfig{})
	mustStart(t, c)

	tests := []struct {
		name    string
		payload any
		want    string
	}{
		{"Nil", nil, `null`},
		{"RawMessage", json.RawMessage(`{"a":1}`), `{"a":1}`},
		{"Bytes", []byte(`[1,2]`), `[1,2]`},
		{"Struct", struct {
			Name string `json:"name"`
		}{"ada"}, `{"name":"ada"}`},
		{"Map", map[string]int{"n": 2}, `{"n":2}`},
	}
	for _, tt := range tests {
		j := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "one-key", Payload: tt.payload})
		if string(j.Payload) != tt.want {
			t.Errorf("%s: stored payload %s, want %s", tt.name, j.Payload, tt.want)
		}
		select {
		case p := <-got:
			if string(p) != tt.want {
				t.Errorf("%s: handler saw payload %s, want %s", tt.name, p, tt.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: handler did not run", tt.name)
		}
	}
}

// Enqueue returns only after the store committed the job; concurrent
// enqueues share one transaction.
func TestGroupCommit(t *testing.T) {
	t.Parallel()

	t.Run("AckWaitsForCommit", func(t *testing.T) {
		t.Parallel()
		drv := &countingDriver{Driver: openStore(t), hold: make(chan struct{})}
		cfg := testConfig(t)
		cfg.Store = drv
		c := newClient(t, cfg)
		mustRegister(t, c, "k", noop, herald.KindConfig{})
		mustStart(t, c)

		returned := make(chan error, 1)
		go func() {
			_, err := c.Enqueue(context.Background(), herald.EnqueueParams{Kind: "k", Key: "a"})
			returned <- err
		}()
		waitFor(t, 10*time.Second, "the insert to reach the store", func() bool { return drv.held.Load() == 1 })
		select {
		case err := <-returned:
			t.Fatalf("Enqueue returned (%v) while its transaction had not committed", err)
		case <-time.After(100 * time.Millisecond):
		}
		close(drv.hold)
		if err := <-returned; err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
	})

	t.Run("ConcurrentEnqueuesShareATransaction", func(t *testing.T) {
		t.Parallel()
		drv := &countingDriver{Driver: openStore(t), hold: make(chan struct{})}
		cfg := testConfig(t)
		cfg.Store = drv
		c := newClient(t, cfg)
		mustRegister(t, c, "k", noop, herald.KindConfig{})
		mustStart(t, c)

		const n = 50
		var wg sync.WaitGroup
		errs := make(chan error, n)
		// The first insert holds the store; the rest queue up behind it
		// and must go in together.
		wg.Go(func() {
			_, err := c.Enqueue(context.Background(), herald.EnqueueParams{Kind: "k", Key: "first"})
			errs <- err
		})
		waitFor(t, 10*time.Second, "the first insert to reach the store", func() bool { return drv.held.Load() == 1 })
		for i := range n - 1 {
			wg.Go(func() {
				_, err := c.Enqueue(context.Background(), herald.EnqueueParams{Kind: "k", Key: fmt.Sprintf("k%d", i)})
				errs <- err
			})
		}
		time.Sleep(200 * time.Millisecond) // let them all queue
		close(drv.hold)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("Enqueue: %v", err)
			}
		}
		batches := drv.insertBatches()
		total, biggest := 0, 0
		for _, b := range batches {
			total += b
			biggest = max(biggest, b)
		}
		if total != n {
			t.Errorf("store saw %d inserts, want %d", total, n)
		}
		// The queued enqueues (all of them, unless a goroutine was slow to
		// get going) go in one transaction.
		if biggest < n/2 || len(batches) > 3 {
			t.Errorf("insert transactions %v: want the %d queued enqueues committed together", batches, n-1)
		}
	})

	// A batch the store rejects fails alone: enqueues that shared its
	// transaction are retried on their own and succeed.
	t.Run("FailedBatchFailsAlone", func(t *testing.T) {
		t.Parallel()
		poison := func(jobs []store.InsertParams) bool {
			for _, j := range jobs {
				if j.Key == "poison" {
					return true
				}
			}
			return false
		}
		drv := &countingDriver{Driver: openStore(t), hold: make(chan struct{})}
		drv.failExchange = func(p store.ExchangeParams) error {
			if poison(p.Inserts) {
				return fmt.Errorf("injected: %w", store.ErrUnavailable)
			}
			return nil
		}
		drv.failMany = func(p store.InsertManyParams) error {
			if poison(p.Jobs) {
				return fmt.Errorf("injected: %w", store.ErrUnavailable)
			}
			return nil
		}
		cfg := testConfig(t)
		cfg.Store = drv
		c := newClient(t, cfg)
		mustRegister(t, c, "k", noop, herald.KindConfig{})
		mustStart(t, c)

		var wg sync.WaitGroup
		var okErr, poisonErr error
		wg.Go(func() {
			_, okErr = c.Enqueue(context.Background(), herald.EnqueueParams{Kind: "k", Key: "warmup"})
		})
		waitFor(t, 10*time.Second, "the first insert to reach the store", func() bool { return drv.held.Load() == 1 })
		var goodRes []herald.InsertResult
		var goodErr error
		wg.Go(func() {
			goodRes, goodErr = c.EnqueueMany(context.Background(), []herald.EnqueueParams{
				{Kind: "k", Key: "good"}, {Kind: "k", Key: "good"}})
		})
		wg.Go(func() {
			_, poisonErr = c.EnqueueMany(context.Background(), []herald.EnqueueParams{
				{Kind: "k", Key: "fine"}, {Kind: "k", Key: "poison"}})
		})
		time.Sleep(200 * time.Millisecond)
		close(drv.hold)
		wg.Wait()
		if okErr != nil || goodErr != nil {
			t.Fatalf("healthy enqueues failed: %v, %v", okErr, goodErr)
		}
		if !errors.Is(poisonErr, herald.ErrUnavailable) {
			t.Fatalf("poisoned batch = %v, want ErrUnavailable", poisonErr)
		}
		for _, r := range goodRes {
			waitState(t, c, r.Job.ID, herald.StateCompleted)
		}
		for _, key := range []string{"fine", "poison"} {
			jobs, err := c.List(t.Context(), herald.ListParams{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			if len(jobs) != 0 {
				t.Errorf("rejected batch stored %d jobs of key %q; want none (all or nothing)", len(jobs), key)
			}
		}
	})
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	var ran atomic.Int64
	mustRegister(t, c, "k", func(context.Context, *herald.Job) error { ran.Add(1); return nil }, herald.KindConfig{})
	mustStart(t, c)
	ctx := t.Context()

	first, err := c.Enqueue(ctx, herald.EnqueueParams{Kind: "k", Key: "a", IdempotencyKey: "order-1", Payload: 1})
	if err != nil || first.Existing {
		t.Fatalf("first Enqueue = %+v, %v; want a new job", first, err)
	}
	waitState(t, c, first.Job.ID, herald.StateCompleted)

	tests := []struct {
		name  string
		batch []herald.EnqueueParams
		want  []bool // Existing per job
	}{
		{"Repeat", []herald.EnqueueParams{{Kind: "k", Key: "a", IdempotencyKey: "order-1", Payload: 2}}, []bool{true}},
		{"RepeatInBatchWithNew", []herald.EnqueueParams{
			{Kind: "k", Key: "b", IdempotencyKey: "order-2"},
			{Kind: "k", Key: "a", IdempotencyKey: "order-1"},
		}, []bool{false, true}},
		{"SameKeyTwiceInOneBatch", []herald.EnqueueParams{
			{Kind: "k", IdempotencyKey: "order-3"},
			{Kind: "k", IdempotencyKey: "order-3"},
		}, []bool{false, true}},
	}
	for _, tt := range tests {
		res, err := c.EnqueueMany(ctx, tt.batch)
		if err != nil {
			t.Fatalf("%s: EnqueueMany: %v", tt.name, err)
		}
		for i, r := range res {
			if r.Existing != tt.want[i] {
				t.Errorf("%s: job %d Existing = %v, want %v", tt.name, i, r.Existing, tt.want[i])
			}
			if r.Existing && tt.batch[i].IdempotencyKey == "order-1" && r.Job.ID != first.Job.ID {
				t.Errorf("%s: existing job id %d, want %d", tt.name, r.Job.ID, first.Job.ID)
			}
		}
		if tt.name == "SameKeyTwiceInOneBatch" && res[0].Job.ID != res[1].Job.ID {
			t.Errorf("%s: ids %d and %d, want the same job", tt.name, res[0].Job.ID, res[1].Job.ID)
		}
	}
	// The repeat returned the stored job, not the new request.
	again, err := c.Enqueue(ctx, herald.EnqueueParams{Kind: "k", Key: "a", IdempotencyKey: "order-1", Payload: 99})
	if err != nil || !again.Existing || string(again.Job.Payload) != "1" || again.Job.State != herald.StateCompleted {
		t.Errorf("repeat Enqueue = %+v, %v; want the existing completed job with payload 1", again, err)
	}

	jobs, err := c.List(ctx, herald.ListParams{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 3 {
		t.Errorf("%d jobs stored, want 3 (order-1, order-2, order-3)", len(jobs))
	}
	for _, j := range jobs {
		waitState(t, c, j.ID, herald.StateCompleted)
	}
	m, err := c.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Enqueued != 3 || ran.Load() != 3 {
		t.Errorf("Metrics.Enqueued = %d, handler runs = %d; want 3 and 3 (repeats store nothing)", m.Enqueued, ran.Load())
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.StatsInterval = 20 * time.Millisecond
	c := newClient(t, cfg)
	release := make(chan struct{})
	mustRegister(t, c, "ok", noop, herald.KindConfig{})
	mustRegister(t, c, "fail", func(_ context.Context, j *herald.Job) error {
		return errors.New("boom")
	}, herald.KindConfig{MaxAttempts: 2, BackoffBase: time.Millisecond})
	mustRegister(t, c, "block", func(ctx context.Context, j *herald.Job) error {
		<-release
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)

	var ids []int64
	for i := range 5 {
		ids = append(ids, mustEnqueue(t, c, herald.EnqueueParams{Kind: "ok", Key: fmt.Sprintf("k%d", i%2)}).ID)
	}
	failID := mustEnqueue(t, c, herald.EnqueueParams{Kind: "fail"}).ID
	blockID := mustEnqueue(t, c, herald.EnqueueParams{Kind: "block"}).ID
	for _, id := range ids {
		waitState(t, c, id, herald.StateCompleted)
	}
	waitState(t, c, failID, herald.StateDiscarded)
	waitState(t, c, blockID, herald.StateRunning)

	// Counters are updated just after the outcomes commit: poll.
	waitErr(t, 10*time.Second, func() error {
		m, err := c.Metrics()
		if err != nil {
			return err
		}
		if m.Enqueued != 7 || m.Started != 8 || m.Completed != 5 || m.Failed != 2 || m.Discarded != 1 || m.Running != 1 {
			return fmt.Errorf("Metrics = %+v; want enqueued 7, started 8, completed 5, failed 2, discarded 1, running 1", m)
		}
		want := map[string]herald.KindMetrics{
			"ok":    {Enqueued: 5, Started: 5, Completed: 5},
			"fail":  {Enqueued: 1, Started: 2, Failed: 2, Discarded: 1},
			"block": {Enqueued: 1, Started: 1},
		}
		for kind, w := range want {
			if got := m.ByKind[kind]; got != w {
				return fmt.Errorf("ByKind[%s] = %+v, want %+v", kind, got, w)
			}
		}
		return nil
	})
	waitFor(t, 10*time.Second, "a store snapshot", func() bool {
		m, err := c.Metrics()
		return err == nil && m.Store != nil && m.Store.ByKindState["ok"][herald.StateCompleted] == 5
	})
	close(release)
	waitState(t, c, blockID, herald.StateCompleted)
	waitFor(t, 10*time.Second, "Running to drop to 0", func() bool {
		m, err := c.Metrics()
		return err == nil && m.Running == 0 && m.Completed == 6
	})

	st, err := c.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.ByKindState["ok"][herald.StateCompleted] != 5 || st.ByKindState["fail"][herald.StateDiscarded] != 1 ||
		st.ByKindState["block"][herald.StateCompleted] != 1 {
		t.Errorf("Stats = %+v", st.ByKindState)
	}
}

func TestOnAttempt(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []store.Outcome
	cfg := testConfig(t)
	cfg.OnAttempt = func(kind string, o store.Outcome, d time.Duration) {
		mu.Lock()
		got = append(got, o)
		mu.Unlock()
	}
	c := newClient(t, cfg)
	mustRegister(t, c, "k", func(_ context.Context, j *herald.Job) error {
		if j.Attempt == 1 {
			return errors.New("first try fails")
		}
		return nil
	}, herald.KindConfig{BackoffBase: time.Millisecond})
	mustStart(t, c)
	id := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k"}).ID
	waitState(t, c, id, herald.StateCompleted)
	waitFor(t, 5*time.Second, "two OnAttempt calls", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	if got[0] != store.OutcomeRetry || got[1] != store.OutcomeCompleted {
		t.Errorf("OnAttempt outcomes = %v, want [retry completed]", got)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	var ranA, ranB atomic.Int64
	mustRegister(t, c, "a", func(context.Context, *herald.Job) error { ranA.Add(1); return nil }, herald.KindConfig{})
	mustRegister(t, c, "b", func(context.Context, *herald.Job) error { ranB.Add(1); return nil }, herald.KindConfig{})
	mustStart(t, c)

	if err := c.Pause("nope"); !errors.Is(err, herald.ErrUnknownKind) {
		t.Errorf("Pause(unknown) = %v, want ErrUnknownKind", err)
	}
	if err := c.Pause("a"); err != nil {
		t.Fatal(err)
	}
	m, _ := c.Metrics()
	if !m.ByKind["a"].Paused || m.ByKind["b"].Paused {
		t.Errorf("Paused flags = a:%v b:%v, want a:true b:false", m.ByKind["a"].Paused, m.ByKind["b"].Paused)
	}
	a := mustEnqueue(t, c, herald.EnqueueParams{Kind: "a", Key: "x"})
	b := mustEnqueue(t, c, herald.EnqueueParams{Kind: "b", Key: "y"})
	waitState(t, c, b.ID, herald.StateCompleted)
	time.Sleep(150 * time.Millisecond) // many poll intervals
	if n := ranA.Load(); n != 0 {
		t.Fatalf("paused kind ran %d jobs", n)
	}
	if j, _ := c.Get(t.Context(), a.ID); j.State != herald.StateAvailable {
		t.Errorf("paused job state %s, want available", j.State)
	}
	if err := c.Resume("a"); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, a.ID, herald.StateCompleted)
	m, _ = c.Metrics()
	if m.ByKind["a"].Paused {
		t.Error("kind a still reported paused after Resume")
	}
}

func TestGetListLine(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	release := make(chan struct{})
	mustRegister(t, c, "k", func(ctx context.Context, j *herald.Job) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)
	defer close(release)

	if _, err := c.Get(t.Context(), 12345); !errors.Is(err, herald.ErrNotFound) {
		t.Errorf("Get(missing) = %v, want ErrNotFound", err)
	}
	if _, err := c.List(t.Context(), herald.ListParams{State: "bogus"}); !errors.Is(err, herald.ErrInvalidJob) || fieldOf(err) != "state" {
		t.Errorf("List(bogus state) = %v, want ErrInvalidJob on field state", err)
	}
	j1 := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct"})
	j2 := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct"})
	j3 := mustEnqueue(t, c, herald.EnqueueParams{Kind: "k", Key: "acct", Delay: time.Hour})
	waitState(t, c, j1.ID, herald.StateRunning)

	line, err := c.Line(t.Context(), "acct")
	if err != nil {
		t.Fatal(err)
	}
	if line.Head == nil || line.Head.ID != j1.ID || line.Pending != 3 {
		t.Errorf("Line = %+v; want head %d and 3 pending", line, j1.ID)
	}
	if got, _ := c.Get(t.Context(), j2.ID); got.Head || got.State != herald.StateAvailable {
		t.Errorf("job behind the head = %+v; want available, not head", got)
	}
	if got, _ := c.Get(t.Context(), j3.ID); got.State != herald.StateScheduled {
		t.Errorf("delayed job state %s, want scheduled", got.State)
	}
	running, err := c.List(t.Context(), herald.ListParams{State: herald.StateRunning})
	if err != nil || len(running) != 1 || running[0].ID != j1.ID {
		t.Errorf("List(running) = %v, %v; want just job %d", running, err, j1.ID)
	}
	page, err := c.List(t.Context(), herald.ListParams{Key: "acct", AfterID: j1.ID, Limit: 1})
	if err != nil || len(page) != 1 || page[0].ID != j2.ID {
		t.Errorf("List(after %d, limit 1) = %v, %v; want job %d", j1.ID, page, err, j2.ID)
	}
	// A job not yet started can be cancelled; the running one cannot.
	if _, err := c.Cancel(t.Context(), j1.ID); !errors.Is(err, herald.ErrWrongState) {
		t.Errorf("Cancel(running) = %v, want ErrWrongState", err)
	}
	if got, err := c.Cancel(t.Context(), j3.ID); err != nil || got.State != herald.StateCancelled {
		t.Errorf("Cancel(scheduled) = %+v, %v; want cancelled", got, err)
	}
}

func TestRecordOutputReachesNextAttempt(t *testing.T) {
	t.Parallel()
	c := newClient(t, testConfig(t))
	seen := make(chan json.RawMessage, 3)
	mustRegister(t, c, "steps", func(ctx context.Context, job *herald.Job) error {
		seen <- job.Output
		if job.Attempt == 1 {
			if err := herald.RecordOutput(ctx, map[string]int{"done": 1}); err != nil {
				t.Errorf("RecordOutput: %v", err)
			}
			return errors.New("half done")
		}
		return nil
	}, herald.KindConfig{BackoffBase: time.Millisecond, BackoffCap: time.Millisecond})
	mustStart(t, c)
	id := mustEnqueue(t, c, herald.EnqueueParams{Kind: "steps", Key: "k"}).ID
	done := waitState(t, c, id, herald.StateCompleted)
	if string(done.Output) != `{"done":1}` {
		t.Errorf("completed job's Output = %s, want {\"done\":1}", done.Output)
	}
	if first := <-seen; first != nil {
		t.Errorf("first attempt saw Output %s, want nil", first)
	}
	if second := <-seen; string(second) != `{"done":1}` {
		t.Errorf("second attempt saw Output %s, want {\"done\":1}", second)
	}
	if err := herald.RecordOutput(t.Context(), 1); !errors.Is(err, herald.ErrNoAttempt) {
		t.Errorf("RecordOutput outside an attempt = %v, want ErrNoAttempt", err)
	}
}
