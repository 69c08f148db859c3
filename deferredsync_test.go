package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/sqlite"
)

// gatedSync is the SQLite store with control over when its commits become
// durable. From the first exchange with inserts on, every exchange's
// durability waits for the round it joined to be decided, as a disk that
// has not flushed yet holds back that commit and all after it; before it,
// and once opened, commits are durable as the store says.
type gatedSync struct {
	*sqlite.Store
	mu     sync.Mutex
	gating bool
	opened bool
	round  *gateRound // the undecided round, if any
	gated  atomic.Int64
}

type gateRound struct {
	done    chan struct{}
	verdict error
}

func (g *gatedSync) ExchangeDeferred(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, store.Durable, error) {
	res, durable, err := g.Store.ExchangeDeferred(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(p.Inserts) > 0 && !g.opened {
		g.gating = true
	}
	if !g.gating {
		return res, durable, nil
	}
	if g.round == nil {
		g.round = &gateRound{done: make(chan struct{})}
	}
	g.gated.Add(1)
	r := g.round
	return res, func() error {
		<-r.done
		if r.verdict != nil {
			return fmt.Errorf("%w: %w", store.ErrCommitUnknown, r.verdict)
		}
		return durable()
	}, nil
}

// decide settles the commits gated so far (nil: durable); later ones stay
// gated.
func (g *gatedSync) decide(verdict error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r := g.round; r != nil {
		r.verdict = verdict
		close(r.done)
		g.round = nil
	}
}

// release decides the gated commits and lets every later one through.
func (g *gatedSync) release(verdict error) {
	g.decide(verdict)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gating, g.opened = false, true
}

// newGatedClient is a started client on a gatedSync store, with kind "k"
// counting its runs in ran. A test that fails while commits are gated
// releases them before the client stops, which would otherwise wait for
// them for ever.
func newGatedClient(t *testing.T) (c *herald.Client, drv *gatedSync, ran *atomic.Int64) {
	t.Helper()
	drv = &gatedSync{Store: openStore(t)}
	cfg := testConfig(t)
	cfg.Store = drv
	c = newClient(t, cfg)
	t.Cleanup(func() { drv.release(nil) })
	ran = &atomic.Int64{}
	mustRegister(t, c, "k", func(context.Context, *herald.Job) error {
		ran.Add(1)
		return nil
	}, herald.KindConfig{})
	mustStart(t, c)
	return c, drv, ran
}

// With a driver whose commits become durable after they return, the engine
// acknowledges an enqueue and starts a claimed job only once the commit is
// durable, and writes its next cycles meanwhile.
func TestEngineWaitsForDurability(t *testing.T) {
	t.Parallel()
	c, drv, ran := newGatedClient(t)

	type answer struct {
		job *herald.Job
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		r, err := c.Enqueue(t.Context(), herald.EnqueueParams{Kind: "k", Key: "acct"})
		if err != nil {
			answered <- answer{nil, err}
			return
		}
		answered <- answer{r.Job, nil}
	}()
	waitFor(t, 5*time.Second, "the insert's exchange", func() bool { return drv.gated.Load() > 0 })
	select {
	case a := <-answered:
		t.Fatalf("enqueue answered before its commit was durable: %v, %v", a.job, a.err)
	case <-time.After(100 * time.Millisecond):
	}
	if n := ran.Load(); n != 0 {
		t.Fatalf("%d jobs ran before their claim was durable", n)
	}

	drv.release(nil)
	a := <-answered
	if a.err != nil {
		t.Fatal(a.err)
	}
	waitState(t, c, a.job.ID, herald.StateCompleted)
	if n := ran.Load(); n != 1 {
		t.Errorf("the job ran %d times, want 1", n)
	}
}

// When a commit's sync fails, its enqueues are answered with
// ErrCommitUnknown (the job may or may not survive a power loss) and its
// claimed jobs are not run from that claim: they go back to their line
// and run once a later claim is durable.
func TestEngineDurabilityFailure(t *testing.T) {
	t.Parallel()
	c, drv, ran := newGatedClient(t)

	answered := make(chan error, 1)
	go func() {
		_, err := c.Enqueue(t.Context(), herald.EnqueueParams{Kind: "k", Key: "acct"})
		answered <- err
	}()
	waitFor(t, 5*time.Second, "the insert's exchange", func() bool { return drv.gated.Load() > 0 })
	drv.decide(errors.New("injected: the disk lost the flush"))
	if err := <-answered; !errors.Is(err, store.ErrCommitUnknown) {
		t.Fatalf("Enqueue = %v, want ErrCommitUnknown", err)
	}
	// Later commits stay gated for a moment: the job's release and any
	// new claim of it are not durable yet, so nothing may run.
	time.Sleep(100 * time.Millisecond)
	if n := ran.Load(); n != 0 {
		t.Fatalf("%d jobs ran from a claim whose commit failed to sync", n)
	}
	drv.release(nil)
	// The store itself is sound (only the injected sync failed): the job
	// was stored, released unrun, and runs from a later, durable claim.
	jobs, err := c.List(t.Context(), herald.ListParams{Key: "acct"})
	if err != nil || len(jobs) != 1 {
		t.Fatalf("List = %v, %v; want the one job", jobs, err)
	}
	waitState(t, c, jobs[0].ID, herald.StateCompleted)
	if n := ran.Load(); n != 1 {
		t.Errorf("the job ran %d times, want 1", n)
	}
}
