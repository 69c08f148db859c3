package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/heraldmq/herald/store"
)

// The hot-path statements. Batches pass ids and keys as one JSON array
// (json_each) so a cycle runs a handful of statements whatever its size.
// "key <> ”" lets SQLite use the partial head index; plan_test.go checks
// that none of them scans the table.
const (
	insertSQL = `INSERT INTO herald_jobs
		(kind, key, payload, state, head, max_attempts, run_at, due_at, idempotency_key, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

	// demoteSQL takes [[key, due], ...]: a head that has never started and is
	// due later than a newcomer gives up its place; promoteSQL then picks
	// the true front of the line.
	demoteSQL = `UPDATE herald_jobs SET head = 0 WHERE id IN (
		SELECT h.id FROM json_each(?1) p
		JOIN herald_jobs h ON h.key = p.value ->> 0 AND h.key <> '' AND h.head = 1
		WHERE h.state = 0 AND h.due_at > p.value ->> 1)`

	// promoteSQL takes [key, ...] and makes the front of each headless
	// line its head.
	promoteSQL = `UPDATE herald_jobs SET head = 1 WHERE id IN (
		SELECT (SELECT j.id FROM herald_jobs j WHERE j.key = k.value AND j.state < 4
			ORDER BY j.due_at, j.id LIMIT 1)
		FROM json_each(?1) k
		WHERE k.value <> '' AND NOT EXISTS (
			SELECT 1 FROM herald_jobs h WHERE h.key = k.value AND h.key <> '' AND h.head = 1))`

	// completeSQL takes [[id, started_at], ...].
	completeSQL = `UPDATE herald_jobs SET state = 4, head = 0, attempt = attempt + 1,
		started_at = p.value ->> 1, finished_at = ?2
		FROM json_each(?1) p WHERE herald_jobs.id = p.value ->> 0`

	// claimSQL reads ready heads, skipping the ones this process already
	// runs (?3, a JSON array of ids): claims live in memory, see claims.go.
	claimSQL = `SELECT ` + jobColumns + ` FROM herald_jobs
		WHERE kind = ?1 AND head = 1 AND state IN (0, 1, 3) AND run_at <= ?2
			AND id NOT IN (SELECT value FROM json_each(?3))
		ORDER BY run_at, id LIMIT ?4`

	nextRunSQL = `SELECT min(run_at) FROM herald_jobs WHERE kind = ? AND head = 1 AND state IN (0, 1, 3)`
)

// Per-job statements for failed attempts. ?1 id, ?2 started_at, ?3 now,
// ?4 retry at, ?5 message, ?6 time as text, ?7 block key.
var failSQL = map[store.Outcome]string{
	store.OutcomeRetry: `UPDATE herald_jobs SET state = 3, run_at = ?4, attempt = attempt + 1, started_at = ?2,
		errors = json_insert(coalesce(errors, '[]'), '$[#]', json_object('at', ?6, 'attempt', attempt + 1, 'message', ?5))
		WHERE id = ?1`,
	store.OutcomeDiscard: `UPDATE herald_jobs SET state = 5, finished_at = ?3, attempt = attempt + 1, started_at = ?2,
		head = CASE WHEN ?7 AND key <> '' THEN 1 ELSE 0 END,
		errors = json_insert(coalesce(errors, '[]'), '$[#]', json_object('at', ?6, 'attempt', attempt + 1, 'message', ?5))
		WHERE id = ?1`,
}

// Exchange runs a cycle's inserts, finishes and claim in one transaction.
func (s *Store) Exchange(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, error) {
	if p.Now.IsZero() {
		p.Now = time.Now()
	}
	// One exchange at a time: claims are read and changed around the
	// transaction, and the writer is a single connection anyway.
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	var (
		res  *store.ExchangeResult
		done []int64
	)
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res = &store.ExchangeResult{}
		lines := &lineSet{}
		var err error
		if res.Inserted, err = insertTx(ctx, tx, p, lines); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		if res.Finished, done, err = s.finishTx(ctx, tx, p.Now, p.Finishes, lines); err != nil {
			return fmt.Errorf("finish: %w", err)
		}
		if err := lines.settle(ctx, tx); err != nil {
			return fmt.Errorf("advance lines: %w", err)
		}
		if p.Claim != nil {
			if res.Claimed, err = s.claimTx(ctx, tx, *p.Claim); err != nil {
				return fmt.Errorf("claim: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	// Only a committed transaction changes what this process runs.
	s.claims.release(done)
	if p.Claim != nil {
		s.claims.add(res.Claimed, p.Claim.Owner, p.Claim.LeaseUntil)
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

// Claim marks ready heads running and returns them.
func (s *Store) Claim(ctx context.Context, p store.ClaimParams) ([]*store.Job, error) {
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: p.Now, Claim: &p})
	if err != nil {
		return nil, err
	}
	return res.Claimed, nil
}

// lineSet collects the keys whose lines a transaction changed, so their
// heads are fixed up with two set-based statements at the end.
type lineSet struct {
	promote map[string]struct{}
	due     map[string]int64 // earliest due of newcomers per key
}

func (l *lineSet) add(key string) {
	if key == "" {
		return
	}
	if l.promote == nil {
		l.promote = map[string]struct{}{}
	}
	l.promote[key] = struct{}{}
}

func (l *lineSet) arrive(key string, dueUS int64) {
	if key == "" {
		return
	}
	l.add(key)
	if l.due == nil {
		l.due = map[string]int64{}
	}
	if d, ok := l.due[key]; !ok || dueUS < d {
		l.due[key] = dueUS
	}
}

func (l *lineSet) settle(ctx context.Context, tx *sql.Tx) error {
	if len(l.due) > 0 {
		pairs := make([][2]any, 0, len(l.due))
		for k, d := range l.due {
			pairs = append(pairs, [2]any{k, d})
		}
		b, err := json.Marshal(pairs)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, demoteSQL, string(b)); err != nil {
			return err
		}
	}
	if len(l.promote) == 0 {
		return nil
	}
	keys := make([]string, 0, len(l.promote))
	for k := range l.promote {
		keys = append(keys, k)
	}
	b, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, promoteSQL, string(b))
	return err
}

func insertTx(ctx context.Context, tx *sql.Tx, p store.ExchangeParams, lines *lineSet) ([]store.InsertResult, error) {
	if len(p.Inserts) == 0 {
		return nil, nil
	}
	stmt, err := tx.PrepareContext(ctx, insertSQL)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	now := p.Now
	nowUS := micros(now)
	results := make([]store.InsertResult, len(p.Inserts))
	for i, in := range p.Inserts {
		if in.IdempotencyKey != "" {
			existing, err := idempotent(ctx, tx, in.IdempotencyKey, p.IdempotencySince, now)
			if err != nil {
				return nil, err
			}
			if existing != nil {
				results[i] = store.InsertResult{Job: existing, Existing: true}
				continue
			}
		}
		// A job joins its key's line when it becomes due (due_at), never
		// ahead of a job that is already due.
		dueUS := nowUS
		state := stAvailable
		if in.RunAt.After(now) {
			dueUS, state = micros(in.RunAt), stScheduled
		}
		head := 0
		if in.Key == "" {
			head = 1
		}
		var idem any
		if in.IdempotencyKey != "" {
			idem = in.IdempotencyKey
		}
		r, err := stmt.ExecContext(ctx, in.Kind, in.Key, []byte(in.Payload), state, head,
			in.MaxAttempts, dueUS, dueUS, idem, nowUS)
		if err != nil {
			return nil, err
		}
		id, err := r.LastInsertId()
		if err != nil {
			return nil, err
		}
		lines.arrive(in.Key, dueUS)
		results[i] = store.InsertResult{Job: &store.Job{
			ID: id, Kind: in.Kind, Key: in.Key, Payload: in.Payload,
			State: stateNames[state], Head: head == 1, MaxAttempts: in.MaxAttempts,
			RunAt: fromMicros(dueUS), DueAt: fromMicros(dueUS),
			IdempotencyKey: in.IdempotencyKey, CreatedAt: fromMicros(nowUS),
		}}
	}
	return results, nil
}

// idempotent returns the live job holding key, or nil. A job past the
// window gives its key up so a new job can take it.
func idempotent(ctx context.Context, tx *sql.Tx, key string, since, now time.Time) (*store.Job, error) {
	row := tx.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM herald_jobs WHERE idempotency_key = ?`, key)
	j, err := scanJob(row, now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !j.CreatedAt.Before(since) {
		return j, nil
	}
	_, err = tx.ExecContext(ctx, `UPDATE herald_jobs SET idempotency_key = NULL WHERE id = ?`, j.ID)
	return nil, err
}

// finishTx writes outcomes of jobs this process claimed. It returns the
// ids whose claims end once the transaction commits.
func (s *Store) finishTx(ctx context.Context, tx *sql.Tx, now time.Time, finishes []store.FinishParams, lines *lineSet) ([]store.FinishResult, []int64, error) {
	if len(finishes) == 0 {
		return nil, nil, nil
	}
	results := make([]store.FinishResult, len(finishes))
	done := make([]int64, 0, len(finishes))
	nowUS := micros(now)
	at := now.UTC().Format(time.RFC3339Nano)
	var completed [][2]int64
	prepared := map[store.Outcome]*sql.Stmt{}
	defer func() {
		for _, st := range prepared {
			st.Close()
		}
	}()
	for i, f := range finishes {
		results[i].ID = f.ID
		c, ok := s.claims.get(f.ID)
		if !ok || c.owner != f.Owner {
			results[i].Fenced = true // not ours (any more): write nothing
			continue
		}
		done = append(done, f.ID)
		switch f.Outcome {
		case store.OutcomeCompleted:
			completed = append(completed, [2]int64{f.ID, c.startedUS})
			lines.add(c.key)
		case store.OutcomeRelease:
			// The attempt was never recorded: dropping the claim is all.
		case store.OutcomeRetry, store.OutcomeDiscard:
			st := prepared[f.Outcome]
			if st == nil {
				var err error
				if st, err = tx.PrepareContext(ctx, failSQL[f.Outcome]); err != nil {
					return nil, nil, err
				}
				prepared[f.Outcome] = st
			}
			if _, err := st.ExecContext(ctx, f.ID, c.startedUS, nowUS, micros(f.RetryAt), f.Error, at, f.BlockKey); err != nil {
				return nil, nil, err
			}
			if f.Outcome == store.OutcomeDiscard && !f.BlockKey {
				lines.add(c.key)
			}
		default:
			return nil, nil, fmt.Errorf("job %d: unknown outcome %d", f.ID, f.Outcome)
		}
	}
	if len(completed) > 0 {
		b, err := json.Marshal(completed)
		if err != nil {
			return nil, nil, err
		}
		if _, err := tx.ExecContext(ctx, completeSQL, string(b), nowUS); err != nil {
			return nil, nil, err
		}
	}
	return results, done, nil
}

// claimTx reads ready heads not already running here. The claims are
// recorded in memory by the caller once the transaction commits.
func (s *Store) claimTx(ctx context.Context, tx *sql.Tx, p store.ClaimParams) ([]*store.Job, error) {
	stmt, err := tx.PrepareContext(ctx, claimSQL)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	var jobs []*store.Job
	nowUS := micros(p.Now)
	left := p.Max
	for _, l := range p.Limits {
		n := min(l.Max, left)
		if n <= 0 {
			continue
		}
		running, err := json.Marshal(s.claims.ofKind(l.Kind))
		if err != nil {
			return nil, err
		}
		before := len(jobs)
		rows, err := stmt.QueryContext(ctx, l.Kind, nowUS, string(running), n)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			j, err := scanJob(rows, p.Now)
			if err != nil {
				rows.Close()
				return nil, err
			}
			j.State = store.StateRunning
			j.Attempt++
			j.StartedAt = fromMicros(nowUS)
			j.LeaseOwner = p.Owner
			jobs = append(jobs, j)
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		left -= len(jobs) - before
	}
	return jobs, nil
}
