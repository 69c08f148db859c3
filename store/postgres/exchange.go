package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldmq/herald/store"
)

// ts is t as PostgreSQL stores it (microseconds, UTC), so what a call
// returns equals what a later read returns.
func ts(t time.Time) time.Time { return t.Truncate(time.Microsecond).UTC() }

// Exchange runs a cycle's inserts, finishes and claim as one pipelined
// batch in one implicit transaction: one round trip, one commit.
func (s *Store) Exchange(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, error) {
	if p.Now.IsZero() {
		p.Now = time.Now()
	}
	p.Now = ts(p.Now)
	for _, f := range p.Finishes {
		if f.Outcome < store.OutcomeCompleted || f.Outcome > store.OutcomeRelease {
			return nil, fmt.Errorf("postgres: job %d: unknown outcome %d", f.ID, f.Outcome)
		}
	}
	var res *store.ExchangeResult
	err := withRetry(ctx, func() error {
		ctx, cancel := s.bound(ctx)
		defer cancel()
		var err error
		res, err = s.exchange(ctx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: exchange: %w", wrap(err))
	}
	return res, nil
}

// InsertMany stores a batch in one transaction.
func (s *Store) InsertMany(ctx context.Context, p store.InsertManyParams) ([]store.InsertResult, error) {
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: p.Now, Inserts: p.Jobs, IdempotencySince: p.IdempotencySince})
	if err != nil {
		return nil, err
	}
	return res.Inserted, nil
}

// FinishMany records outcomes and advances the lines of finished heads.
func (s *Store) FinishMany(ctx context.Context, p store.FinishManyParams) ([]store.FinishResult, error) {
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: p.Now, Finishes: p.Finishes})
	if err != nil {
		return nil, err
	}
	return res.Finished, nil
}

// Claim marks ready heads running under a lease and returns them.
func (s *Store) Claim(ctx context.Context, p store.ClaimParams) ([]*store.Job, error) {
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: p.Now, Claim: &p})
	if err != nil {
		return nil, err
	}
	return res.Claimed, nil
}

// insertPlan is the inserts of one exchange after idempotency matching.
type insertPlan struct {
	results []store.InsertResult
	fresh   []int // indexes of p.Inserts to insert, in order
	dupOf   map[int]int
	expired []string // idempotency keys whose old job left the window
}

// planInserts looks up idempotency keys (one query, only when a batch has
// any): a key held by a job created within the window returns that job; a
// key held by an older job is released for the new one; a key repeated in
// the batch resolves to its first job.
func (s *Store) planInserts(ctx context.Context, p store.ExchangeParams) (*insertPlan, error) {
	plan := &insertPlan{results: make([]store.InsertResult, len(p.Inserts)), dupOf: map[int]int{}}
	var keys []string
	for _, in := range p.Inserts {
		if in.IdempotencyKey != "" {
			keys = append(keys, in.IdempotencyKey)
		}
	}
	held := map[string]*store.Job{}
	if len(keys) > 0 {
		rows, err := s.pool.Query(ctx, s.sql.lookupIdem, keys)
		if err != nil {
			return nil, err
		}
		jobs, err := pgx.CollectRows(rows, scanJobRow(p.Now))
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			held[j.IdempotencyKey] = j
		}
	}
	first := map[string]int{}
	for i, in := range p.Inserts {
		if k := in.IdempotencyKey; k != "" {
			if j, ok := held[k]; ok {
				if !j.CreatedAt.Before(p.IdempotencySince) {
					plan.results[i] = store.InsertResult{Job: j, Existing: true}
					continue
				}
				plan.expired = append(plan.expired, k)
				delete(held, k)
			}
			if f, ok := first[k]; ok {
				plan.dupOf[i] = f
				continue
			}
			first[k] = i
		}
		plan.fresh = append(plan.fresh, i)
	}
	return plan, nil
}

func (s *Store) exchange(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, error) {
	res := &store.ExchangeResult{}
	if len(p.Inserts) == 0 && len(p.Finishes) == 0 && p.Claim == nil {
		return res, nil
	}
	plan, err := s.planInserts(ctx, p)
	if err != nil {
		return nil, err
	}
	var (
		b          pgx.Batch
		insertKeys []string
		finIDs     []int64 // outcomes whose key the database must tell
	)
	for _, i := range plan.fresh {
		insertKeys = append(insertKeys, p.Inserts[i].Key)
	}
	slices.Sort(insertKeys)
	insertKeys = slices.Compact(insertKeys)
	var finKeys []string // locked exclusively; insertKeys shared
	if len(p.Finishes) > 0 {
		s.keysMu.Lock()
		for _, f := range p.Finishes {
			if key, ok := s.claimedKeys[f.ID]; ok {
				finKeys = append(finKeys, key)
			} else {
				finIDs = append(finIDs, f.ID)
			}
		}
		s.keysMu.Unlock()
	}
	if len(insertKeys) > 0 || len(finKeys) > 0 || len(finIDs) > 0 {
		b.Queue(s.sql.lockKeys, s.lockSeed, finKeys, finIDs, insertKeys)
	}
	if len(plan.expired) > 0 {
		b.Queue(s.sql.releaseIdem, plan.expired, p.IdempotencySince)
	}
	var inserted []store.InsertResult
	moved := map[int64]time.Time{}
	if len(plan.fresh) > 0 {
		inserted = s.queueInsert(&b, p, plan.fresh)
		b.Queue(s.sql.keepBehind, insertKeys, p.Now).Query(func(rows pgx.Rows) error {
			var id int64
			var due time.Time
			_, err := pgx.ForEachRow(rows, []any{&id, &due}, func() error {
				moved[id] = due.UTC()
				return nil
			})
			return err
		})
	}
	var finished map[int64]bool
	switch {
	case p.Claim != nil && len(p.Finishes) > 0 && !slices.ContainsFunc(p.Finishes, keepsHead):
		finished = s.queueFinishClaim(&b, p, &res.Claimed)
	default:
		if len(p.Finishes) > 0 {
			finished = s.queueFinish(&b, p)
		}
		if p.Claim != nil {
			s.queueClaim(&b, p.Now, *p.Claim, &res.Claimed)
		}
	}
	if !s.pollOnly && (len(plan.fresh) > 0 || len(p.Finishes) > 0) {
		b.Queue(s.sql.notify, s.channel)
	}
	if err := s.pool.SendBatch(ctx, &b).Close(); err != nil {
		if commitUnknown(err) {
			return nil, fmt.Errorf("%w: %w", store.ErrCommitUnknown, err)
		}
		return nil, err
	}
	s.keysMu.Lock()
	for _, f := range p.Finishes {
		delete(s.claimedKeys, f.ID)
	}
	for _, j := range res.Claimed {
		s.claimedKeys[j.ID] = j.Key
	}
	s.keysMu.Unlock()
	for n, i := range plan.fresh {
		if due, ok := moved[inserted[n].Job.ID]; ok {
			inserted[n].Job.DueAt = due
		}
		plan.results[i] = inserted[n]
	}
	for i, f := range plan.dupOf {
		plan.results[i] = store.InsertResult{Job: plan.results[f].Job, Existing: true}
	}
	if len(p.Inserts) > 0 {
		res.Inserted = plan.results
	}
	if len(p.Finishes) > 0 {
		res.Finished = make([]store.FinishResult, len(p.Finishes))
		for i, f := range p.Finishes {
			res.Finished[i] = store.FinishResult{ID: f.ID, Fenced: !finished[f.ID]}
		}
	}
	return res, nil
}

// queueInsert queues the insert of p.Inserts[fresh...]; the returned
// results are filled in when the batch is read.
func (s *Store) queueInsert(b *pgx.Batch, p store.ExchangeParams, fresh []int) []store.InsertResult {
	n := len(fresh)
	var (
		kinds, keys, idems = make([]string, n), make([]string, n), make([]string, n)
		payloads           = make([][]byte, n)
		dues               = make([]time.Time, n)
		states             = make([]int16, n)
		maxAttempts        = make([]int32, n)
		results            = make([]store.InsertResult, n)
	)
	for k, i := range fresh {
		in := p.Inserts[i]
		// A job joins its key's line when it becomes due, never ahead of
		// a job that is already due.
		due, state := p.Now, int16(stAvailable)
		if in.RunAt.After(p.Now) {
			due, state = ts(in.RunAt), stScheduled
		}
		payload := []byte(in.Payload)
		if payload == nil {
			payload = []byte{}
		}
		kinds[k], keys[k], idems[k], payloads[k] = in.Kind, in.Key, in.IdempotencyKey, payload
		dues[k], states[k], maxAttempts[k] = due, state, int32(in.MaxAttempts) //nolint:gosec // attempts are small
		results[k] = store.InsertResult{Job: &store.Job{
			Kind: in.Kind, Key: in.Key, Payload: in.Payload, State: stateNames[state], MaxAttempts: in.MaxAttempts,
			RunAt: due, DueAt: due, IdempotencyKey: in.IdempotencyKey, CreatedAt: p.Now,
		}}
	}
	b.Queue(s.sql.insert, p.Now, kinds, keys, payloads, dues, states, maxAttempts, idems).Query(func(rows pgx.Rows) error {
		type row struct {
			id   int64
			head bool
		}
		got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.id, &x.head)
			return x, err
		})
		if err != nil {
			return err
		}
		if len(got) != n {
			return fmt.Errorf("insert returned %d rows for %d jobs", len(got), n)
		}
		// Ids were drawn in insertion order, so the k-th smallest belongs
		// to the k-th job.
		for k, r := range got {
			results[k].Job.ID, results[k].Job.Head = r.id, r.head
		}
		return nil
	})
	return results
}

// keepsHead reports an outcome that leaves its job at the head of its
// line (a retry or a release): its line stays ready for the next claim,
// which the combined finish-and-claim statement cannot be (it would write
// the job twice).
func keepsHead(f store.FinishParams) bool {
	return f.Outcome == store.OutcomeRetry || f.Outcome == store.OutcomeRelease
}

// finishArgs are finishSQL's parameters for p's outcomes, in id order (as
// renewals take their row locks).
func finishArgs(p store.ExchangeParams) []any {
	fins := slices.Clone(p.Finishes)
	slices.SortStableFunc(fins, func(a, b store.FinishParams) int { return cmp.Compare(a.ID, b.ID) })
	n := len(fins)
	var (
		ids, tokens  = make([]int64, n), make([]int64, n)
		owners, errs = make([]string, n), make([]string, n)
		outcomes     = make([]int16, n)
		retryAt      = make([]time.Time, n)
		outputs      = make([][]byte, n)
		block        = make([]bool, n)
	)
	for i, f := range fins {
		ids[i], tokens[i], owners[i], errs[i] = f.ID, f.LeaseToken, f.Owner, f.Error
		outcomes[i] = int16(f.Outcome) //nolint:gosec // validated in Exchange
		retryAt[i] = ts(f.RetryAt)
		if f.Outcome == store.OutcomeRetry && f.RetryAt.IsZero() {
			retryAt[i] = p.Now
		}
		if f.Output != nil {
			outputs[i] = []byte(f.Output)
		}
		block[i] = f.BlockKey
	}
	return []any{p.Now, p.Now.Format(time.RFC3339Nano), ids, owners, tokens, outcomes, errs, retryAt, outputs, block}
}

// queueFinish queues the outcomes; the returned set (ids whose outcome
// took effect) is filled in when the batch is read.
func (s *Store) queueFinish(b *pgx.Batch, p store.ExchangeParams) map[int64]bool {
	done := map[int64]bool{}
	b.Queue(s.sql.finish, finishArgs(p)...).Query(func(rows pgx.Rows) error {
		got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		for _, id := range got {
			done[id] = true
		}
		return err
	})
	return done
}

// claimArgs are claimSQL's parameters after the time ($2..$6).
func claimArgs(c store.ClaimParams) []any {
	kinds := make([]string, 0, len(c.Limits))
	maxes := make([]int32, 0, len(c.Limits))
	for _, l := range c.Limits {
		kinds = append(kinds, l.Kind)
		maxes = append(maxes, int32(max(l.Max, 0))) //nolint:gosec // caps are small
	}
	return []any{kinds, maxes, max(c.Max, 0), c.Owner, ts(c.LeaseUntil)}
}

// queueFinishClaim queues the outcomes and the claim as one statement
// (finishClaimSQL); the returned set and *out are filled in when the
// batch is read.
func (s *Store) queueFinishClaim(b *pgx.Batch, p store.ExchangeParams, out *[]*store.Job) map[int64]bool {
	done := map[int64]bool{}
	b.Queue(s.sql.finishClaim, append(finishArgs(p), claimArgs(*p.Claim)...)...).Query(func(rows pgx.Rows) error {
		var jobs []*store.Job
		skipTag := tagSkipper{rows}
		var fin bool
		var id int64
		var head []any // the tag and id; nil skips the rest
		for rows.Next() {
			if head == nil {
				// Only a row proves a result: a failed batch (the
				// connection dropped) hands this function rows without
				// one, whose FieldDescriptions would be a nil dereference.
				head = make([]any, len(rows.FieldDescriptions()))
				head[0], head[1] = &fin, &id
			}
			if err := rows.Scan(head...); err != nil {
				return err
			}
			if fin {
				done[id] = true
				continue
			}
			j, err := scanJob(skipTag, p.Now)
			if err != nil {
				return err
			}
			jobs = append(jobs, j)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		slices.SortStableFunc(jobs, func(a, b *store.Job) int { return a.RunAt.Compare(b.RunAt) })
		*out = jobs
		return nil
	})
	return done
}

// tagSkipper scans a row of finishClaimSQL after its first column.
type tagSkipper struct{ rows pgx.Rows }

func (t tagSkipper) Scan(dest ...any) error {
	return t.rows.Scan(append([]any{nil}, dest...)...)
}

// queueClaim queues the claim; *out is filled in when the batch is read.
func (s *Store) queueClaim(b *pgx.Batch, now time.Time, c store.ClaimParams, out *[]*store.Job) {
	b.Queue(s.sql.claim, append([]any{now}, claimArgs(c)...)...).Query(func(rows pgx.Rows) error {
		jobs, err := pgx.CollectRows(rows, scanJobRow(now))
		if err != nil {
			return err
		}
		// Oldest first within a kind, as the claim ordered them.
		slices.SortStableFunc(jobs, func(a, b *store.Job) int { return a.RunAt.Compare(b.RunAt) })
		*out = jobs
		return nil
	})
}

var stateNames = [...]store.State{
	stScheduled: store.StateScheduled,
	stAvailable: store.StateAvailable,
	stRunning:   store.StateRunning,
	stRetryable: store.StateRetryable,
	stCompleted: store.StateCompleted,
	stDiscarded: store.StateDiscarded,
	stCancelled: store.StateCancelled,
}

// scanJobRow scans selectJob's columns; now decides whether a scheduled
// job is reported as available.
func scanJobRow(now time.Time) pgx.RowToFunc[*store.Job] {
	return func(row pgx.CollectableRow) (*store.Job, error) { return scanJob(row, now) }
}

func scanJob(row pgx.Row, now time.Time) (*store.Job, error) {
	var (
		j                 store.Job
		state             int16
		idem, owner       *string
		errs              []byte
		started, finished *time.Time
		output            []byte
		token             *int64
	)
	err := row.Scan(&j.ID, &j.Kind, &j.Key, &j.Payload, &state, &j.Attempt, &j.MaxAttempts, &j.RunAt, &j.DueAt,
		&idem, &errs, &j.CreatedAt, &started, &finished, &output, &owner, &token, &j.Head)
	if err != nil {
		return nil, err
	}
	if state < 0 || int(state) >= len(stateNames) {
		return nil, fmt.Errorf("job %d: unknown state %d", j.ID, state)
	}
	j.State = stateNames[state]
	// A scheduled job whose time has come is available; no write is needed
	// to make that so.
	if j.State == store.StateScheduled && !j.RunAt.After(now) {
		j.State = store.StateAvailable
	}
	j.RunAt, j.DueAt, j.CreatedAt = j.RunAt.UTC(), j.DueAt.UTC(), j.CreatedAt.UTC()
	if idem != nil {
		j.IdempotencyKey = *idem
	}
	if owner != nil {
		j.LeaseOwner = *owner
	}
	if token != nil {
		j.LeaseToken = *token
	}
	if started != nil {
		j.StartedAt = started.UTC()
	}
	if finished != nil {
		j.FinishedAt = finished.UTC()
	}
	if output != nil {
		j.Output = output
	}
	if len(errs) > 0 {
		if err := json.Unmarshal(errs, &j.Errors); err != nil {
			return nil, fmt.Errorf("job %d: decode errors: %w", j.ID, err)
		}
	}
	return &j, nil
}

// errNoRows reports pgx's "no rows" in any wrapping.
func errNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
