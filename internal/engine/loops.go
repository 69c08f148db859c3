package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/heraldmq/herald/store"
)

type insertRequest struct {
	jobs []store.InsertParams
	done chan insertResult
}

type insertResult struct {
	results []store.InsertResult
	err     error
}

// Insert stores jobs durably (one transaction for the batch) and returns once
// they are committed. Concurrent calls share a transaction and its fsync.
func (e *Engine) Insert(ctx context.Context, jobs []store.InsertParams) ([]store.InsertResult, error) {
	if len(jobs) == 0 {
		return nil, nil
	}
	req := &insertRequest{jobs: jobs, done: make(chan insertResult, 1)}
	e.gate.RLock()
	if e.stopping.Load() || !e.started.Load() {
		e.gate.RUnlock()
		return nil, ErrStopped
	}
	select {
	case e.enqueue <- req:
		e.gate.RUnlock()
	case <-ctx.Done():
		e.gate.RUnlock()
		return nil, ctx.Err()
	}
	select {
	case r := <-req.done:
		return r.results, r.err
	case <-ctx.Done():
		// The insert may still commit: the caller cannot know, as with any
		// request whose answer was lost.
		return nil, ctx.Err()
	}
}

// commitLoop is the group commit: it takes every request waiting in the
// queue (up to MaxBatch rows) and stores them in one transaction.
func (e *Engine) commitLoop() {
	defer e.loops.Done()
	defer close(e.committer)
	batch := make([]*insertRequest, 0, 64)
	for req := range e.enqueue {
		batch = append(batch[:0], req)
		rows := len(req.jobs)
	drain:
		for rows < e.cfg.MaxBatch {
			select {
			case r, ok := <-e.enqueue:
				if !ok {
					break drain
				}
				batch = append(batch, r)
				rows += len(r.jobs)
			default:
				break drain
			}
		}
		e.commit(batch, rows)
	}
}

func (e *Engine) commit(batch []*insertRequest, rows int) {
	if len(batch) == 1 {
		res, err := e.insertNow(batch[0].jobs)
		batch[0].done <- insertResult{res, err}
		return
	}
	all := make([]store.InsertParams, 0, rows)
	for _, r := range batch {
		all = append(all, r.jobs...)
	}
	res, err := e.insertNow(all)
	if err != nil {
		// One request's failure must not fail the others: retry them apart.
		for _, r := range batch {
			res, err := e.insertNow(r.jobs)
			r.done <- insertResult{res, err}
		}
		return
	}
	for _, r := range batch {
		n := len(r.jobs)
		r.done <- insertResult{results: res[:n:n]}
		res = res[n:]
	}
}

func (e *Engine) insertNow(jobs []store.InsertParams) ([]store.InsertResult, error) {
	now := e.clk.Now()
	res, err := e.drv.InsertMany(context.Background(), store.InsertManyParams{
		Jobs: jobs, Now: now, IdempotencySince: now.Add(-e.idempotencyWindow()),
	})
	if err != nil {
		return nil, err
	}
	var n int64
	for _, r := range res {
		if !r.Existing {
			n++
			e.metrics.kind(r.Job.Kind).Enqueued.Add(1)
		}
	}
	e.metrics.Enqueued.Add(n)
	e.signal()
	return res, nil
}

func (e *Engine) idempotencyWindow() time.Duration {
	if e.cfg.IdempotencyWindow > 0 {
		return e.cfg.IdempotencyWindow
	}
	return 24 * time.Hour
}

// dispatchLoop claims ready heads into free worker slots.
func (e *Engine) dispatchLoop() {
	defer e.dispatchWG.Done()
	kinds := append([]string(nil), e.order...)
	rotate := 0
	failures := 0
	for !e.stopping.Load() {
		limits, total := e.freeSlots(rotate)
		rotate++
		if total == 0 {
			e.waitWake(e.cfg.PollInterval)
			continue
		}
		now := e.clk.Now()
		jobs, err := e.drv.Claim(e.rootCtx, store.ClaimParams{
			Now: now, Owner: e.cfg.Owner, LeaseUntil: now.Add(e.cfg.LeaseDuration),
			Limits: limits, Max: total,
		})
		if err != nil {
			failures++
			e.log.Error("claim jobs failed; retrying", "err", err, "failures", failures)
			e.waitWake(min(time.Duration(failures)*100*time.Millisecond, 5*time.Second))
			continue
		}
		failures = 0
		for _, j := range jobs {
			e.startJob(j)
		}
		if len(jobs) > 0 {
			continue // there may be more; free slots decide
		}
		wait := e.cfg.PollInterval
		if next, err := e.drv.NextRunAt(e.rootCtx, kinds); err == nil && !next.IsZero() {
			wait = min(wait, max(next.Sub(e.clk.Now()), 0))
		}
		if wait > 0 {
			e.waitWake(wait)
		}
	}
}

// waitWake sleeps until d passes, the engine is signalled, or it stops.
func (e *Engine) waitWake(d time.Duration) {
	c, stop := e.clk.NewTimer(d)
	defer stop()
	select {
	case <-e.wake:
	case <-c:
	case <-e.rootCtx.Done():
	}
}

// freeSlots returns per-kind claim caps (rotated for fairness) and the total.
func (e *Engine) freeSlots(rotate int) ([]store.KindLimit, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	global := e.cfg.Workers - e.running
	if global <= 0 {
		return nil, 0
	}
	var limits []store.KindLimit
	n := len(e.order)
	for i := range n {
		k := e.kinds[e.order[(i+rotate)%n]]
		if k.paused.Load() {
			continue
		}
		if free := k.Concurrency - k.running; free > 0 {
			limits = append(limits, store.KindLimit{Kind: k.name, Max: min(free, global, e.cfg.MaxBatch)})
		}
	}
	if len(limits) == 0 {
		return nil, 0
	}
	return limits, min(global, e.cfg.MaxBatch)
}

func (e *Engine) startJob(j *store.Job) {
	k := e.kinds[j.Kind]
	e.mu.Lock()
	e.running++
	k.running++
	e.mu.Unlock()
	e.metrics.Started.Add(1)
	e.metrics.kind(j.Kind).Started.Add(1)
	e.workers.Add(1)
	go e.work(k, j)
}

type finishRequest struct {
	store.FinishParams
	kind     string
	duration time.Duration
}

// work runs one attempt and hands its outcome to the finisher.
func (e *Engine) work(k *kindState, j *store.Job) {
	defer e.workers.Done()
	ctx := e.workCtx
	var cancel context.CancelFunc
	if k.Timeout > 0 {
		ctx, cancel = context.WithTimeoutCause(ctx, k.Timeout, errTimeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	start := time.Now()
	err := call(ctx, k.Handler, j)
	cause := context.Cause(ctx)
	cancel()
	f := e.outcome(k, j, err, cause)
	e.mu.Lock()
	e.running--
	k.running--
	e.mu.Unlock()
	e.finish <- finishRequest{FinishParams: f, kind: j.Kind, duration: time.Since(start)}
	e.signal()
}

func call(ctx context.Context, h HandlerFunc, j *store.Job) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError(v)
		}
	}()
	return h(ctx, j)
}

// outcome classifies a handler's result.
func (e *Engine) outcome(k *kindState, j *store.Job, err, cause error) store.FinishParams {
	f := store.FinishParams{ID: j.ID, Owner: e.cfg.Owner}
	if err == nil {
		f.Outcome = store.OutcomeCompleted
		return f
	}
	if errors.Is(cause, errStopping) {
		f.Outcome = store.OutcomeRelease
		return f
	}
	if errors.Is(cause, errTimeout) {
		err = fmt.Errorf("%w after %s: %w", errTimeout, k.Timeout, err)
	}
	f.Error = err.Error()
	var perm *PermanentError
	if errors.As(err, &perm) || j.Attempt >= j.MaxAttempts {
		f.Outcome = store.OutcomeDiscard
		f.BlockKey = k.BlockKeyOnDiscard
		return f
	}
	f.Outcome = store.OutcomeRetry
	delay := backoff(j.Attempt, k.BackoffBase, k.BackoffCap)
	var ra *RetryAfterError
	if errors.As(err, &ra) && ra.Delay >= 0 {
		delay = ra.Delay
	}
	f.RetryAt = e.clk.Now().Add(delay)
	return f
}

// finishLoop group-commits outcomes. A failed write is retried: the jobs
// stay running under our lease until it succeeds, so nothing is lost.
func (e *Engine) finishLoop() {
	defer e.loops.Done()
	batch := make([]finishRequest, 0, 256)
	for req := range e.finish {
		batch = append(batch[:0], req)
	drain:
		for len(batch) < e.cfg.MaxBatch {
			select {
			case r, ok := <-e.finish:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		e.writeFinishes(batch)
		e.signal()
	}
}

func (e *Engine) writeFinishes(batch []finishRequest) {
	params := store.FinishManyParams{Finishes: make([]store.FinishParams, len(batch))}
	for i, r := range batch {
		params.Finishes[i] = r.FinishParams
	}
	for attempt := 1; ; attempt++ {
		params.Now = e.clk.Now()
		res, err := e.drv.FinishMany(context.Background(), params)
		if err == nil {
			e.count(batch, res)
			return
		}
		e.log.Error("recording job outcomes failed; retrying", "err", err, "jobs", len(batch), "attempt", attempt)
		time.Sleep(min(time.Duration(attempt)*100*time.Millisecond, 5*time.Second))
	}
}

func (e *Engine) count(batch []finishRequest, res []store.FinishResult) {
	for i, r := range batch {
		km := e.metrics.kind(r.kind)
		if res[i].Fenced {
			e.metrics.Fenced.Add(1)
			e.log.Warn("job outcome not recorded: lease lost to another node", "job_id", r.ID)
			continue
		}
		if e.cfg.OnAttempt != nil {
			e.cfg.OnAttempt(r.kind, r.Outcome, r.duration)
		}
		switch r.Outcome {
		case store.OutcomeCompleted:
			e.metrics.Completed.Add(1)
			km.Completed.Add(1)
		case store.OutcomeRetry:
			e.metrics.Failed.Add(1)
			km.Failed.Add(1)
		case store.OutcomeDiscard:
			e.metrics.Failed.Add(1)
			e.metrics.Discarded.Add(1)
			km.Failed.Add(1)
			km.Discarded.Add(1)
		case store.OutcomeRelease:
			e.metrics.Released.Add(1)
		}
	}
}

// maintainLoop renews leases, rescues expired ones, prunes retention and
// refreshes store statistics.
func (e *Engine) maintainLoop() {
	defer e.loops.Done()
	renewEvery := e.cfg.LeaseDuration / 3
	nextRenew := e.clk.Now().Add(renewEvery)
	nextMaint := e.clk.Now()
	nextStats := e.clk.Now()
	for {
		now := e.clk.Now()
		ctx := e.rootCtx
		if !now.Before(nextRenew) {
			if err := e.drv.RenewLeases(ctx, e.cfg.Owner, now.Add(e.cfg.LeaseDuration)); err != nil && ctx.Err() == nil {
				e.log.Error("renew leases failed", "err", err)
			}
			nextRenew = now.Add(renewEvery)
		}
		if !now.Before(nextMaint) {
			e.maintain(ctx, now)
			nextMaint = now.Add(e.cfg.MaintenanceEvery)
		}
		if !now.Before(nextStats) {
			if st, err := e.drv.Stats(ctx, now); err == nil {
				e.stats.Store(st)
			} else if ctx.Err() == nil {
				e.log.Warn("store stats failed", "err", err)
			}
			nextStats = now.Add(e.cfg.StatsEvery)
		}
		d := minTime(nextRenew, nextMaint, nextStats).Sub(e.clk.Now())
		c, stop := e.clk.NewTimer(max(d, time.Millisecond))
		select {
		case <-c:
			stop()
		case <-e.rootCtx.Done():
			stop()
			return
		}
	}
}

func minTime(ts ...time.Time) time.Time {
	m := ts[0]
	for _, t := range ts[1:] {
		if t.Before(m) {
			m = t
		}
	}
	return m
}

func (e *Engine) maintain(ctx context.Context, now time.Time) {
	if n, err := e.drv.Rescue(ctx, store.RescueParams{Now: now, ExpiredBefore: now}); err != nil {
		if ctx.Err() == nil {
			e.log.Error("rescue expired leases failed", "err", err)
		}
	} else if n > 0 {
		e.log.Warn("rescued jobs whose lease expired", "jobs", n)
		e.signal()
	}
	p := store.PruneParams{IdempotencyBefore: now.Add(-e.idempotencyWindow()), Limit: 10000}
	if e.cfg.CompletedRetention >= 0 {
		p.CompletedBefore = now.Add(-cmp.Or(e.cfg.CompletedRetention, 24*time.Hour))
	}
	if e.cfg.DiscardedRetention >= 0 {
		p.DiscardedBefore = now.Add(-cmp.Or(e.cfg.DiscardedRetention, 7*24*time.Hour))
	}
	for ctx.Err() == nil {
		n, err := e.drv.Prune(ctx, p)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Error("prune finished jobs failed", "err", err)
			}
			return
		}
		e.metrics.Pruned.Add(int64(n))
		if n < p.Limit {
			return
		}
	}
}
