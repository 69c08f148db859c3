package herald_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/clock"
	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig is a Config for tests: its own data directory and a short
// poll interval, so scheduled work is picked up quickly.
func testConfig(t *testing.T) herald.Config {
	t.Helper()
	return herald.Config{
		DataDir:      t.TempDir(),
		PollInterval: 10 * time.Millisecond,
	}
}

// newClient creates a client for cfg and stops it when the test ends.
func newClient(t *testing.T, cfg herald.Config) *herald.Client {
	t.Helper()
	c, err := herald.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return c
}

// mustRegister registers kind or fails the test.
func mustRegister(t *testing.T, c *herald.Client, kind string, h herald.HandlerFunc, kc herald.KindConfig) {
	t.Helper()
	if err := c.Register(kind, h, kc); err != nil {
		t.Fatalf("Register(%q): %v", kind, err)
	}
}

func mustStart(t *testing.T, c *herald.Client) {
	t.Helper()
	if err := c.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func mustEnqueue(t *testing.T, c *herald.Client, p herald.EnqueueParams) *herald.Job {
	t.Helper()
	res, err := c.Enqueue(t.Context(), p)
	if err != nil {
		t.Fatalf("Enqueue(%+v): %v", p, err)
	}
	return res.Job
}

// stopClient stops c with a generous deadline and fails the test on error.
func stopClient(t *testing.T, c *herald.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitErr polls check until it returns nil; on timeout it fails the test
// with check's last error.
func waitErr(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitState polls until job id is in state and returns it.
func waitState(t *testing.T, c *herald.Client, id int64, state herald.JobState) *herald.Job {
	t.Helper()
	var last *herald.Job
	waitFor(t, 10*time.Second, "job state "+string(state), func() bool {
		j, err := c.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("Get(%d): %v", id, err)
		}
		last = j
		return j.State == state
	})
	return last
}

// advanceUntil advances a fake clock by step, again and again, until cond
// holds: the engine may create its timers after any single Advance.
func advanceUntil(t *testing.T, clk *clock.Fake, step time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (fake clock at %s)", what, clk.Now())
		}
		clk.Advance(step)
		time.Sleep(2 * time.Millisecond)
	}
}

// fakeStart is a round instant so microsecond storage keeps times exact.
var fakeStart = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// tracker records the order attempts started in and every start that
// found another attempt of its key running.
type tracker struct {
	mu      sync.Mutex
	running map[string]int
	overlap []string
	order   []int64 // job ids in start order
}

func newTracker() *tracker { return &tracker{running: map[string]int{}} }

// begin notes that job starts; the returned func notes that it ended.
func (tr *tracker) begin(j *herald.Job) func() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.order = append(tr.order, j.ID)
	if j.Key != "" {
		tr.running[j.Key]++
		if tr.running[j.Key] > 1 {
			tr.overlap = append(tr.overlap, j.Key)
		}
	}
	return func() {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if j.Key != "" {
			tr.running[j.Key]--
		}
	}
}

func (tr *tracker) startOrder() []int64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]int64(nil), tr.order...)
}

func (tr *tracker) starts() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.order)
}

func (tr *tracker) overlaps() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.overlap...)
}

// countingDriver wraps a store.Driver: it counts the inserts of each
// Exchange, can hold Exchange calls that carry inserts until hold is closed,
// and can inject faults.
type countingDriver struct {
	store.Driver
	mu           sync.Mutex
	batches      []int // inserts per Exchange that had any
	hold         chan struct{}
	held         atomic.Int64
	failExchange func(p store.ExchangeParams) error // injected fault: the real store is not called
	failMany     func(p store.InsertManyParams) error
}

func (d *countingDriver) Exchange(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, error) {
	if len(p.Inserts) > 0 {
		d.mu.Lock()
		d.batches = append(d.batches, len(p.Inserts))
		hold := d.hold
		d.mu.Unlock()
		if hold != nil {
			d.held.Add(1)
			<-hold
		}
	}
	if d.failExchange != nil {
		if err := d.failExchange(p); err != nil {
			return nil, err
		}
	}
	return d.Driver.Exchange(ctx, p)
}

func (d *countingDriver) InsertMany(ctx context.Context, p store.InsertManyParams) ([]store.InsertResult, error) {
	if d.failMany != nil {
		if err := d.failMany(p); err != nil {
			return nil, err
		}
	}
	return d.Driver.InsertMany(ctx, p)
}

func (d *countingDriver) insertBatches() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]int(nil), d.batches...)
}

// openStore opens an SQLite store in a fresh directory; the client does not
// own it, so the test closes it.
func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "herald.db"), sqlite.Options{})
	if err != nil {
		t.Fatalf("sqlite.Open: %v", err)
	}
	t.Cleanup(func() { // after the client's Stop (cleanups run last-in first-out)
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// fieldOf returns the field a *herald.FieldError in err names, or "".
func fieldOf(err error) string {
	if fe, ok := errors.AsType[*herald.FieldError](err); ok {
		return fe.Field
	}
	return ""
}
