package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/heraldmq/herald/store"
)

// Stored state codes. The order matters: state < stCompleted means "in line".
const (
	stScheduled = 0
	stAvailable = 1
	stRunning   = 2
	stRetryable = 3
	stCompleted = 4
	stDiscarded = 5
	stCancelled = 6
)

var stateNames = [...]store.State{
	stScheduled: store.StateScheduled,
	stAvailable: store.StateAvailable,
	stRunning:   store.StateRunning,
	stRetryable: store.StateRetryable,
	stCompleted: store.StateCompleted,
	stDiscarded: store.StateDiscarded,
	stCancelled: store.StateCancelled,
}

func stateCode(s store.State) (int, bool) {
	for i, n := range stateNames {
		if n == s {
			return i, true
		}
	}
	return 0, false
}

const jobColumns = `id, kind, key, payload, state, head, attempt, max_attempts, run_at, due_at,
	idempotency_key, errors, created_at, started_at, finished_at`

type scanner interface{ Scan(dest ...any) error }

func scanJob(row scanner, now time.Time) (*store.Job, error) {
	var (
		j                     store.Job
		state, head           int
		runAt, dueAt, created int64
		idem, errs            sql.NullString
		started, finished     sql.NullInt64
		payload               []byte
	)
	err := row.Scan(&j.ID, &j.Kind, &j.Key, &payload, &state, &head, &j.Attempt, &j.MaxAttempts,
		&runAt, &dueAt, &idem, &errs, &created, &started, &finished)
	if err != nil {
		return nil, err
	}
	j.Payload = payload
	j.State = stateNames[state]
	j.Head = head == 1
	j.RunAt = fromMicros(runAt)
	j.DueAt = fromMicros(dueAt)
	// A scheduled job whose time has come is available; no write is needed
	// to make that so.
	if j.State == store.StateScheduled && !j.RunAt.After(now) {
		j.State = store.StateAvailable
	}
	j.IdempotencyKey = idem.String
	j.CreatedAt = fromMicros(created)
	if started.Valid {
		j.StartedAt = fromMicros(started.Int64)
	}
	if finished.Valid {
		j.FinishedAt = fromMicros(finished.Int64)
	}
	if errs.Valid && errs.String != "" {
		if err := json.Unmarshal([]byte(errs.String), &j.Errors); err != nil {
			return nil, fmt.Errorf("sqlite: job %d: decode errors: %w", j.ID, err)
		}
	}
	return &j, nil
}

func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// RenewLeases extends the leases of owner's running jobs.
func (s *Store) RenewLeases(_ context.Context, owner string, until time.Time) error {
	s.claims.renew(owner, until)
	return nil
}

// Rescue ends claims whose lease expired (their worker stalled past it):
// the interrupted attempt counts and is recorded as an error, and the job
// stays at the head of its line, ready to run again.
func (s *Store) Rescue(ctx context.Context, p store.RescueParams) (int, error) {
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	expired := s.claims.expired(micros(p.ExpiredBefore))
	if len(expired) == 0 {
		return 0, nil
	}
	at := p.Now.UTC().Format(time.RFC3339Nano)
	ids := make([]int64, 0, len(expired))
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for id, c := range expired {
			_, err := tx.ExecContext(ctx, `UPDATE herald_jobs SET state = 3, run_at = ?2, attempt = attempt + 1, started_at = ?3,
				errors = json_insert(coalesce(errors, '[]'), '$[#]', json_object('at', ?4, 'attempt', attempt + 1,
					'message', 'interrupted: lease of ' || ?5 || ' expired (worker stalled)'))
				WHERE id = ?1`, id, micros(p.Now), c.startedUS, at, c.owner)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sqlite: rescue: %w", err)
	}
	s.claims.release(ids)
	return len(ids), nil
}

// NextRunAt returns the earliest run_at among pending heads of kinds.
func (s *Store) NextRunAt(ctx context.Context, kinds []string) (time.Time, error) {
	var next int64
	for _, k := range kinds {
		var v sql.NullInt64
		err := s.reader.QueryRowContext(ctx, nextRunSQL, k).Scan(&v)
		if err != nil {
			return time.Time{}, fmt.Errorf("sqlite: next run: %w", err)
		}
		if v.Valid && (next == 0 || v.Int64 < next) {
			next = v.Int64
		}
	}
	if next == 0 {
		return time.Time{}, nil
	}
	return fromMicros(next), nil
}

// Get returns one job.
func (s *Store) Get(ctx context.Context, id int64) (*store.Job, error) {
	j, err := scanJob(s.reader.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM herald_jobs WHERE id = ?`, id), time.Now())
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("job %d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get job %d: %w", id, err)
	}
	return s.claims.overlay(j), nil
}

// List returns jobs matching p in id order.
func (s *Store) List(ctx context.Context, p store.ListParams) ([]*store.Job, error) {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	var (
		where = []string{"id > ?"}
		args  = []any{p.AfterID}
	)
	if p.Kind != "" {
		where = append(where, "kind = ?")
		args = append(args, p.Kind)
	}
	if p.Key != "" {
		where = append(where, "key = ?")
		args = append(args, p.Key)
	}
	if p.State != "" {
		code, ok := stateCode(p.State)
		if !ok {
			return nil, fmt.Errorf("sqlite: list: unknown state %q", p.State)
		}
		switch code {
		case stRunning:
			// Running lives in memory: list exactly the claimed ids.
			ids := s.claims.ids()
			b, err := json.Marshal(ids)
			if err != nil {
				return nil, err
			}
			where = append(where, "id IN (SELECT value FROM json_each(?))")
			args = append(args, string(b))
		case stScheduled:
			where = append(where, "state = 0 AND run_at > ?")
			args = append(args, micros(now))
		case stAvailable:
			where = append(where, "(state = 1 OR (state = 0 AND run_at <= ?))")
			args = append(args, micros(now))
		default:
			where = append(where, "state = ?")
			args = append(args, code)
		}
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	// Running jobs are stored as pending: read enough extra rows to drop
	// them from a pending-state page and still fill it.
	args = append(args, limit+s.claims.len())
	rows, err := s.reader.QueryContext(ctx, `SELECT `+jobColumns+` FROM herald_jobs WHERE `+
		strings.Join(where, " AND ")+` ORDER BY id LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list: %w", err)
	}
	defer rows.Close()
	var jobs []*store.Job
	for rows.Next() && len(jobs) < limit {
		j, err := scanJob(rows, now)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list: %w", err)
		}
		j = s.claims.overlay(j)
		if p.State != "" && j.State != p.State {
			continue
		}
		jobs = append(jobs, j)
	}
	return jobs, rows.Err()
}

// Line describes key's line: how many jobs wait and which is at the front.
func (s *Store) Line(ctx context.Context, key string) (*store.KeyLine, error) {
	line := &store.KeyLine{Key: key}
	if err := s.reader.QueryRowContext(ctx, `SELECT count(*) FROM herald_jobs WHERE key = ? AND state < 4`, key).Scan(&line.Pending); err != nil {
		return nil, fmt.Errorf("sqlite: line: %w", err)
	}
	j, err := scanJob(s.reader.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM herald_jobs WHERE key = ? AND key <> '' AND head = 1`, key), time.Now())
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("sqlite: line: %w", err)
	default:
		line.Head = s.claims.overlay(j)
		if j.State == store.StateDiscarded {
			line.Pending++ // the blocking dead letter is part of the line
		}
	}
	return line, nil
}

// Retry makes a job run again now with a fresh set of attempts. A waiting
// job moves to now in its line; a blocking dead letter keeps its place at
// the head; any other finalized job rejoins its key's line at the back.
func (s *Store) Retry(ctx context.Context, id int64, now time.Time) (*store.Job, error) {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		j, err := scanJob(tx.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM herald_jobs WHERE id = ?`, id), now)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("job %d: %w", id, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		j = s.claims.overlay(j)
		if j.State == store.StateRunning || j.State == store.StateCompleted {
			return fmt.Errorf("retry job %d (%s): %w", id, j.State, store.ErrWrongState)
		}
		nowUS := micros(now)
		dueUS := min(micros(j.DueAt), nowUS)
		if j.State.Finalized() && !j.Head {
			dueUS = nowUS
		}
		_, err = tx.ExecContext(ctx, `UPDATE herald_jobs SET state = 1, run_at = ?1, due_at = ?2, attempt = 0,
			finished_at = NULL WHERE id = ?3`, nowUS, dueUS, id)
		if err != nil {
			return err
		}
		lines := &lineSet{}
		lines.arrive(j.Key, dueUS)
		return lines.settle(ctx, tx)
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return s.getWriter(ctx, id, now)
}

// Cancel finalizes a job that has not started (or a blocking dead letter)
// and lets its key's line advance.
func (s *Store) Cancel(ctx context.Context, id int64, now time.Time) (*store.Job, error) {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		j, err := scanJob(tx.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM herald_jobs WHERE id = ?`, id), now)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("job %d: %w", id, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		j = s.claims.overlay(j)
		blocking := j.State == store.StateDiscarded && j.Head
		if j.State == store.StateRunning || (j.State.Finalized() && !blocking) {
			return fmt.Errorf("cancel job %d (%s): %w", id, j.State, store.ErrWrongState)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE herald_jobs SET state = 6, head = 0, finished_at = ? WHERE id = ?`, micros(now), id); err != nil {
			return err
		}
		lines := &lineSet{}
		lines.add(j.Key)
		return lines.settle(ctx, tx)
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return s.getWriter(ctx, id, now)
}

// getWriter reads through the writer so a caller sees its own write.
func (s *Store) getWriter(ctx context.Context, id int64, now time.Time) (*store.Job, error) {
	j, err := scanJob(s.writer.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM herald_jobs WHERE id = ?`, id), now)
	if err != nil {
		return nil, fmt.Errorf("sqlite: get job %d: %w", id, err)
	}
	return s.claims.overlay(j), nil
}

// Prune deletes finalized jobs past retention and frees expired
// idempotency keys, at most Limit rows of each per call.
func (s *Store) Prune(ctx context.Context, p store.PruneParams) (int, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 10000
	}
	var total int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for _, q := range []struct {
			sql string
			at  time.Time
		}{
			{`DELETE FROM herald_jobs WHERE id IN (SELECT id FROM herald_jobs
				WHERE state >= 4 AND finished_at < ?1 AND state IN (4, 6) LIMIT ?2)`, p.CompletedBefore},
			{`DELETE FROM herald_jobs WHERE id IN (SELECT id FROM herald_jobs
				WHERE state >= 4 AND finished_at < ?1 AND state = 5 AND head = 0 LIMIT ?2)`, p.DiscardedBefore},
		} {
			if q.at.IsZero() {
				continue
			}
			res, err := tx.ExecContext(ctx, q.sql, micros(q.at), limit)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			total += n
		}
		if !p.IdempotencyBefore.IsZero() {
			_, err := tx.ExecContext(ctx, `UPDATE herald_jobs SET idempotency_key = NULL WHERE id IN (
				SELECT id FROM herald_jobs WHERE idempotency_key IS NOT NULL AND created_at < ? LIMIT ?)`,
				micros(p.IdempotencyBefore), limit)
			return err
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sqlite: prune: %w", err)
	}
	return int(total), nil
}

// Stats counts jobs by kind and state. It scans the table: call it
// periodically, not per request on a hot path.
func (s *Store) Stats(ctx context.Context, now time.Time) (*store.Stats, error) {
	st := &store.Stats{ByKindState: map[string]map[store.State]int64{}}
	nowUS := micros(now)
	rows, err := s.reader.QueryContext(ctx, `SELECT kind,
		CASE WHEN state = 0 AND run_at <= ?1 THEN 1 ELSE state END AS st, count(*)
		FROM herald_jobs GROUP BY kind, st`, nowUS)
	if err != nil {
		return nil, fmt.Errorf("sqlite: stats: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var kind string
		var state int
		var n int64
		if err := rows.Scan(&kind, &state, &n); err != nil {
			return nil, fmt.Errorf("sqlite: stats: %w", err)
		}
		if st.ByKindState[kind] == nil {
			st.ByKindState[kind] = map[store.State]int64{}
		}
		st.ByKindState[kind][stateNames[state]] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: stats: %w", err)
	}
	var oldest sql.NullInt64
	err = s.reader.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE state IN (0, 1, 3) AND run_at <= ?1), min(due_at)
		FROM herald_jobs WHERE head = 1 AND state < 4`, nowUS).Scan(&st.ReadyKeys, &oldest)
	if err != nil {
		return nil, fmt.Errorf("sqlite: stats: %w", err)
	}
	if oldest.Valid {
		st.OldestPendingDueAt = fromMicros(oldest.Int64)
	}
	s.claims.countRunning(st)
	st.ReadyKeys = max(st.ReadyKeys-int64(s.claims.len()), 0)
	return st, nil
}
