package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/heraldmq/herald/store"
)

// commitSiblings is how many insert requests the previous cycle must have
// carried for the next to wait CommitDelay before it commits.
const commitSiblings = 16

// commitWait is how long a cycle holding pending insert requests waits
// for more before it commits; last is how many the previous cycle wrote.
// Group commit: while many producers enqueue a job at a time, a moment's
// wait lets more of them share this cycle's commit. A lone producer never
// waits, so an idle engine's pickup latency is unchanged.
func (e *Engine) commitWait(pending, last int) time.Duration {
	if pending == 0 || last < commitSiblings || e.cfg.CommitDelay <= 0 {
		return 0
	}
	return e.cfg.CommitDelay
}

// outcomesBesideInserts caps the outcomes a cycle takes when enqueues are
// waiting too.
const outcomesBesideInserts = 256

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

func (e *Engine) idempotencyWindow() time.Duration {
	if e.cfg.IdempotencyWindow > 0 {
		return e.cfg.IdempotencyWindow
	}
	return 24 * time.Hour
}

// run is the engine's one store loop. Each cycle takes every insert and
// outcome waiting (up to MaxBatch), and writes them and claims ready heads
// for the free worker slots in one transaction: a busy engine pays one
// commit per cycle, and a job whose predecessor just finished can start in
// the same cycle. It returns once Stop has closed both channels and
// everything received has been written.
func (e *Engine) run() {
	defer close(e.loopDone)
	enq, fin := e.enqueue, e.finish
	var (
		inserts  []*insertRequest
		finishes []finishRequest
		mayClaim = true // claimable heads may exist
		failures int
		rotate   int
		noClaims bool
		// lastInsertRequests is how many insert requests the last
		// cycle wrote: a sign of concurrent producers.
		lastInsertRequests int
	)
	for {
		if !noClaims && e.claimsOff() {
			noClaims = true
			close(e.claimsStopped)
		}
		idle := len(inserts) == 0 && len(finishes) == 0 && !(mayClaim && e.hasFreeSlots())
		if idle {
			if enq == nil && fin == nil {
				return
			}
			c, stop := e.clk.NewTimer(e.idleWait())
			select {
			case r, ok := <-enq:
				if !ok {
					enq = nil
				} else {
					inserts = append(inserts, r)
				}
			case f, ok := <-fin:
				if !ok {
					fin = nil
				} else {
					finishes = append(finishes, e.received(f))
				}
			case <-e.wake:
				mayClaim = true
			case <-c:
				mayClaim = true
			}
			stop()
		}
		if d := e.commitWait(len(inserts), lastInsertRequests); d > 0 {
			time.Sleep(d)
		}
		rows := 0
		for _, r := range inserts {
			rows += len(r.jobs)
		}
		// Take what else is waiting. Inserts and outcomes have separate
		// caps so a flood of enqueues never starves outcomes (and with them
		// the lines' progress), or the other way round.
	drain:
		for {
			in, out := enq, fin
			if rows >= e.cfg.MaxBatch {
				in = nil
			}
			// While enqueuers wait, keep cycles short: an acknowledgement
			// should not queue behind a thousand outcomes.
			if len(finishes) >= e.cfg.MaxBatch || (len(inserts) > 0 && len(finishes) >= outcomesBesideInserts) {
				out = nil
			}
			if in == nil && out == nil {
				break
			}
			select {
			case r, ok := <-in:
				if !ok {
					enq = nil
					continue
				}
				inserts = append(inserts, r)
				rows += len(r.jobs)
			case f, ok := <-out:
				if !ok {
					fin = nil
					continue
				}
				finishes = append(finishes, e.received(f))
			case <-e.wake:
				mayClaim = true
			default:
				break drain
			}
		}

		var claim *store.ClaimParams
		now := e.clk.Now()
		// Stop or Drain may have arrived while this pass waited: look
		// again, so no job starts after either began.
		if !noClaims && e.claimsOff() {
			noClaims = true
			close(e.claimsStopped)
		}
		if !noClaims && (mayClaim || len(finishes) > 0 || len(inserts) > 0) {
			if limits, total := e.freeSlots(rotate); total > 0 {
				rotate++
				claim = &store.ClaimParams{Now: now, Owner: e.cfg.Owner,
					LeaseUntil: now.Add(e.cfg.LeaseDuration), Limits: limits, Max: total}
			}
		}
		if claim == nil && len(inserts) == 0 && len(finishes) == 0 {
			mayClaim = false
			continue
		}
		if e.doubtful {
			if err := e.reconcile(now); err != nil {
				failures++
				e.log.Error("store unreachable after a doubtful commit; retrying", "err", err, "failures", failures)
				for _, r := range inserts {
					e.acknowledge(r, nil, err)
				}
				inserts = inserts[:0]
				e.sleep(min(time.Duration(failures)*50*time.Millisecond, 2*time.Second))
				continue
			}
			e.doubtful = false
		}
		cycleStart := time.Now()
		res, durable, err := e.exchange(now, inserts, finishes, claim)
		if e.log.Enabled(context.Background(), slog.LevelDebug) {
			claimed := 0
			if res != nil {
				claimed = len(res.Claimed)
			}
			e.log.Debug("store cycle", "took", time.Since(cycleStart), "inserts", rows,
				"outcomes", len(finishes), "claimed", claimed, "claim", claim != nil)
		}
		if err != nil {
			failures++
			if errors.Is(err, store.ErrCommitUnknown) {
				e.doubtful = true
			}
			e.log.Error("store write failed; retrying", "err", err, "failures", failures,
				"pending_outcomes", len(finishes))
			inserts = inserts[:0] // answered by exchange's fallback
			e.sleep(min(time.Duration(failures)*50*time.Millisecond, 2*time.Second))
			continue
		}
		failures = 0
		e.count(finishes, res.Finished)
		if len(res.Inserted) > 0 || len(finishes) > 0 {
			mayClaim = true
		}
		if claim != nil {
			for _, j := range res.Claimed {
				e.startJob(j, claim.LeaseUntil, durable)
			}
			mayClaim = len(res.Claimed) == claim.Max
		}
		lastInsertRequests = len(inserts)
		inserts, finishes = inserts[:0], finishes[:0]
	}
}

// exchange writes one cycle. If it fails with inserts aboard, each insert
// request is retried on its own (so one bad batch fails alone, and callers
// get an answer now), and the caller retries the outcomes later. With a
// store.DeferredSyncer it returns once the cycle is committed: its
// inserts are acknowledged, and the caller starts its claimed jobs, when
// durable says the commit is durable, while the loop writes its next cycle.
func (e *Engine) exchange(now time.Time, inserts []*insertRequest, finishes []finishRequest, claim *store.ClaimParams) (*store.ExchangeResult, store.Durable, error) {
	p := store.ExchangeParams{Now: now, IdempotencySince: now.Add(-e.idempotencyWindow()), Claim: claim}
	if len(inserts) == 1 {
		p.Inserts = inserts[0].jobs // no copy of a lone batch
	} else if len(inserts) > 1 {
		rows := 0
		for _, r := range inserts {
			rows += len(r.jobs)
		}
		p.Inserts = make([]store.InsertParams, 0, rows)
		for _, r := range inserts {
			p.Inserts = append(p.Inserts, r.jobs...)
		}
	}
	p.Finishes = make([]store.FinishParams, len(finishes))
	for i, f := range finishes {
		p.Finishes[i] = f.FinishParams
	}
	var (
		res     *store.ExchangeResult
		durable store.Durable
		err     error
	)
	if ds, ok := e.drv.(store.DeferredSyncer); ok {
		res, durable, err = ds.ExchangeDeferred(context.Background(), p)
	} else {
		res, err = e.drv.Exchange(context.Background(), p)
	}
	if err == nil {
		if durable == nil || len(inserts) == 0 {
			e.acknowledgeAll(inserts, res.Inserted, nil)
			return res, durable, nil
		}
		// The loop reuses its slice of requests: keep this cycle's.
		reqs := slices.Clone(inserts)
		e.acks.Go(func() { e.acknowledgeAll(reqs, res.Inserted, durable()) })
		return res, durable, nil
	}
	if errors.Is(err, store.ErrCommitUnknown) {
		// The cycle may have stored the inserts: trying them again could
		// store them twice. Their callers learn that the outcome is unknown.
		for _, r := range inserts {
			e.acknowledge(r, nil, err)
		}
		return nil, nil, err
	}
	// The failed cycle may have waited long (a database restart): take
	// the time anew, so a job's due time is not older than its answer.
	now = e.clk.Now()
	for _, r := range inserts {
		res, err := e.drv.InsertMany(context.Background(), store.InsertManyParams{
			Jobs: r.jobs, Now: now, IdempotencySince: now.Add(-e.idempotencyWindow())})
		e.acknowledge(r, res, err)
	}
	return nil, nil, err
}

// acknowledgeAll answers a cycle's insert requests: with their share of
// inserted, or with err (a failed sync: the outcome is unknown).
func (e *Engine) acknowledgeAll(inserts []*insertRequest, inserted []store.InsertResult, err error) {
	for _, r := range inserts {
		if err != nil {
			e.acknowledge(r, nil, err)
			continue
		}
		n := len(r.jobs)
		e.acknowledge(r, inserted[:n:n], nil)
		inserted = inserted[n:]
	}
}

func (e *Engine) acknowledge(r *insertRequest, res []store.InsertResult, err error) {
	if err == nil {
		var n int64
		for _, x := range res {
			if !x.Existing {
				n++
				e.metrics.kind(x.Job.Kind).Enqueued.Add(1)
			}
		}
		e.metrics.Enqueued.Add(n)
	}
	r.done <- insertResult{res, err}
}

// received frees the finished attempt's worker slot.
func (e *Engine) received(f finishRequest) finishRequest {
	k := e.kinds[f.kind]
	k.running--
	e.running.Add(-1)
	return f
}

// idleWait is how long an idle loop may sleep: until the next scheduled
// head of a kind with free slots, at most PollInterval.
func (e *Engine) idleWait() time.Duration {
	wait := e.cfg.PollInterval
	if e.claimsOff() || !e.hasFreeSlots() {
		return wait
	}
	var kinds []string
	for _, name := range e.order {
		k := e.kinds[name]
		if !k.paused.Load() && k.running < k.Concurrency {
			kinds = append(kinds, name)
		}
	}
	next, err := e.drv.NextRunAt(e.rootCtx, kinds)
	if err != nil || next.IsZero() {
		return wait
	}
	return min(wait, max(next.Sub(e.clk.Now()), time.Millisecond))
}

// sleep waits d, or less if the engine is woken.
func (e *Engine) sleep(d time.Duration) {
	c, stop := e.clk.NewTimer(d)
	defer stop()
	select {
	case <-c:
	case <-e.wake:
	}
}

func (e *Engine) hasFreeSlots() bool {
	return int(e.running.Load()) < e.cfg.Workers
}

// freeSlots returns per-kind claim caps (rotated for fairness) and the total.
func (e *Engine) freeSlots(rotate int) ([]store.KindLimit, int) {
	global := e.cfg.Workers - int(e.running.Load())
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

// startJob counts j as running here and starts its attempt once durable
// (nil: already) says the claim is durable.
func (e *Engine) startJob(j *store.Job, leaseUntil time.Time, durable store.Durable) {
	k := e.kinds[j.Kind]
	e.known[j.ID] = j.LeaseToken
	k.running++
	e.running.Add(1)
	e.metrics.Started.Add(1)
	e.metrics.kind(j.Kind).Started.Add(1)
	e.workers.Add(1)
	go e.work(k, j, leaseUntil, durable)
}

type finishRequest struct {
	store.FinishParams
	kind     string
	duration time.Duration
}

// work runs one attempt and hands its outcome to the store loop.
// leaseUntil is the claim's lease end.
func (e *Engine) work(k *kindState, j *store.Job, leaseUntil time.Time, durable store.Durable) {
	defer e.workers.Done()
	if durable != nil {
		if err := durable(); err != nil {
			// The claim may be lost with the commit: running the job
			// could repeat it after a restart, out of its key's order.
			e.log.Error("job not started: its claim may not be durable", "job_id", j.ID, "err", err)
			e.finish <- finishRequest{FinishParams: store.FinishParams{ID: j.ID, Owner: e.cfg.Owner,
				LeaseToken: j.LeaseToken, Outcome: store.OutcomeRelease}, kind: j.Kind}
			return
		}
	}
	// A process stalled (SIGSTOP, a long GC pause, a frozen VM) between
	// claiming a job and starting it may wake after its lease ended: the
	// job may have been rescued and run elsewhere, maybe with its key's
	// next jobs after it. Starting it now would overlap or reorder them,
	// so it is handed back instead (fenced off if another node holds it).
	if !e.leases.held(leaseUntil, e.clk.Now()) {
		e.metrics.LeaseExpiredBeforeStart.Add(1)
		e.log.Warn("job not started: its lease ended before a worker picked it up", "job_id", j.ID)
		e.finish <- finishRequest{FinishParams: store.FinishParams{ID: j.ID, Owner: e.cfg.Owner,
			LeaseToken: j.LeaseToken, Outcome: store.OutcomeRelease}, kind: j.Kind}
		return
	}
	// A store that counts an attempt cut short by a dead or stalled node
	// (PostgreSQL's rescue records it) hands the job out again even when
	// that was its last attempt: running it would exceed MaxAttempts, so
	// it is dead-lettered as is.
	if j.MaxAttempts > 0 && j.Attempt > j.MaxAttempts {
		e.finish <- finishRequest{FinishParams: store.FinishParams{ID: j.ID, Owner: e.cfg.Owner, LeaseToken: j.LeaseToken,
			Outcome: store.OutcomeDiscard, BlockKey: k.BlockKeyOnDiscard,
			Error: fmt.Sprintf("not run: its last attempt (max_attempts %d) was interrupted", j.MaxAttempts)}, kind: j.Kind}
		return
	}
	ctx := e.workCtx
	var cancel context.CancelFunc
	if k.Timeout > 0 {
		ctx, cancel = context.WithTimeoutCause(ctx, k.Timeout, errTimeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	rec := &outputRecorder{}
	ctx = context.WithValue(ctx, outputKey{}, rec)
	ctx = context.WithValue(ctx, leaseKey{}, func() bool { return e.leases.held(leaseUntil, e.clk.Now()) })
	start := time.Now()
	err := call(ctx, k.Handler, j)
	cause := context.Cause(ctx)
	cancel()
	f := e.outcome(k, j, err, cause)
	f.Output = rec.get()
	e.finish <- finishRequest{FinishParams: f, kind: j.Kind, duration: time.Since(start)}
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
	f := store.FinishParams{ID: j.ID, Owner: e.cfg.Owner, LeaseToken: j.LeaseToken}
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

func (e *Engine) count(batch []finishRequest, res []store.FinishResult) {
	for i, r := range batch {
		delete(e.known, r.ID)
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

// reconcile releases the jobs that run under this engine's name in the
// store but not here. After a commit whose outcome is unknown, that cycle
// may have claimed jobs without the engine learning of them; renewals by
// owner name would keep such orphans leased, and their keys blocked, for
// as long as the engine lives.
func (e *Engine) reconcile(now time.Time) error {
	const page = 1000
	ctx := context.Background()
	var orphans []store.FinishParams
	for after := int64(0); ; {
		jobs, err := e.drv.List(ctx, store.ListParams{State: store.StateRunning, AfterID: after, Limit: page, Now: now})
		if err != nil {
			return err
		}
		for _, j := range jobs {
			if token, ok := e.known[j.ID]; j.LeaseOwner == e.cfg.Owner && (!ok || token != j.LeaseToken) {
				orphans = append(orphans, store.FinishParams{ID: j.ID, Owner: j.LeaseOwner,
					LeaseToken: j.LeaseToken, Outcome: store.OutcomeRelease})
			}
		}
		if len(jobs) < page {
			break
		}
		after = jobs[len(jobs)-1].ID
	}
	if len(orphans) == 0 {
		return nil
	}
	if _, err := e.drv.FinishMany(ctx, store.FinishManyParams{Now: now, Finishes: orphans}); err != nil {
		return err
	}
	e.metrics.Released.Add(int64(len(orphans)))
	e.log.Warn("released jobs claimed by a store commit whose outcome was unknown", "jobs", len(orphans))
	return nil
}

// maintainLoop renews leases, rescues expired ones, prunes retention and
// refreshes store statistics.
func (e *Engine) maintainLoop() {
	defer close(e.maintDone)
	renewEvery := e.cfg.LeaseDuration / 3
	nextRenew := e.clk.Now().Add(renewEvery)
	nextRescue := e.clk.Now()
	nextMaint := e.clk.Now()
	nextStats := e.clk.Now()
	if e.cfg.StatsEvery < 0 {
		nextStats = time.Unix(1<<62, 0) // never
	}
	leading := false
	for {
		now := e.clk.Now()
		ctx := e.rootCtx
		if !now.Before(nextRenew) {
			if err := e.drv.RenewLeases(ctx, e.cfg.Owner, now.Add(e.cfg.LeaseDuration)); err != nil {
				if ctx.Err() == nil {
					e.log.Error("renew leases failed", "err", err)
				}
			} else {
				e.leases.renewed(now, e.cfg.LeaseDuration)
			}
			nextRenew = now.Add(renewEvery)
		}
		if !now.Before(nextRescue) {
			leading = e.elect(ctx, leading)
			if leading {
				e.rescue(ctx, now)
			}
			nextRescue = now.Add(e.cfg.RescueEvery)
		}
		if !now.Before(nextMaint) {
			if leading {
				e.prune(ctx, now)
			}
			nextMaint = now.Add(e.cfg.MaintenanceEvery)
		}
		if !now.Before(nextStats) {
			began := e.clk.Now()
			st, err := e.drv.Stats(ctx, now)
			if err == nil {
				e.stats.Store(st)
			} else if ctx.Err() == nil {
				e.log.Warn("store stats failed", "err", err)
			}
			took := e.clk.Now().Sub(began)
			every := statsSpacing(e.cfg.StatsEvery, took)
			if every > e.cfg.StatsEvery {
				e.log.Debug("store stats are slow; refreshing them less often", "took", took, "every", every)
			}
			nextStats = now.Add(every)
		}
		d := minTime(nextRenew, nextRescue, nextMaint, nextStats).Sub(e.clk.Now())
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

// statsSpacing is the wait before the next statistics refresh, one that
// took took: every, or longer when counting is slow. The counts scan the
// jobs table, which grows with retention (a million retained jobs take a
// second or more), and an idle node should not spend a tenth of a core
// on its gauges, nor a busy one take that from its store loop; so the
// refresh never uses more than 1/statsDuty of the time.
func statsSpacing(every, took time.Duration) time.Duration {
	return max(every, took*statsDuty)
}

// statsDuty: counting takes at most one 50th (2 %) of the time.
const statsDuty = 50

func minTime(ts ...time.Time) time.Time {
	m := ts[0]
	for _, t := range ts[1:] {
		if t.Before(m) {
			m = t
		}
	}
	return m
}

// elect reports whether this engine runs maintenance. With a store shared
// by several processes (an Elector) only the elected leader does; a failed
// election keeps the previous answer until the next try, since the lease
// it holds outlives one try.
func (e *Engine) elect(ctx context.Context, leading bool) bool {
	el, ok := e.drv.(store.Elector)
	if !ok {
		return true
	}
	// The leadership term spans several tries, so one slow try does not
	// lose it, and ends well before a job lease would: a dead leader's
	// successor must be in office to rescue the dead node's jobs.
	ttl := min(max(3*e.cfg.RescueEvery, 3*time.Second), e.cfg.LeaseDuration/2)
	now, err := el.Elect(ctx, e.cfg.Owner, ttl)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("leader election failed", "err", err)
		}
		return leading
	}
	if now != leading {
		e.log.Info("maintenance leadership changed", "leader", now, "owner", e.cfg.Owner)
	}
	return now
}

// rescue returns jobs whose lease expired (their node died or stalled) to
// their lines.
func (e *Engine) rescue(ctx context.Context, now time.Time) {
	n, err := e.drv.Rescue(ctx, store.RescueParams{Now: now, ExpiredBefore: now})
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("rescue expired leases failed", "err", err)
		}
		return
	}
	if n > 0 {
		e.log.Warn("rescued jobs whose lease expired", "jobs", n)
		e.signal()
	}
}

// listen turns a shared store's notifications into wake-ups.
func (e *Engine) listen() {
	defer close(e.listenDone)
	l, ok := e.drv.(store.Listener)
	if !ok {
		return
	}
	for e.rootCtx.Err() == nil {
		err := l.Listen(e.rootCtx, e.signal)
		if e.rootCtx.Err() != nil {
			return
		}
		e.log.Warn("store notifications lost; polling until they resume", "err", err)
		c, stop := e.clk.NewTimer(time.Second)
		select {
		case <-c:
		case <-e.rootCtx.Done():
		}
		stop()
	}
}

// prune deletes finished jobs past their retention.
func (e *Engine) prune(ctx context.Context, now time.Time) {
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
