package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldmq/herald/store"
)

// RenewLeases extends the leases of owner's running jobs.
func (s *Store) RenewLeases(ctx context.Context, owner string, until time.Time) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if _, err := s.pool.Exec(ctx, s.sql.renew, owner, ts(until)); err != nil {
		return fmt.Errorf("postgres: renew leases: %w", wrap(err))
	}
	return nil
}

// Rescue returns running jobs whose lease expired (their node died or
// stalled) to their lines: the interrupted attempt counts and is recorded
// as an error, and the job stays its line's head, ready now. Their keys
// are locked first, like any other write to lines. Every repairEvery it
// also runs RepairLines (Rescue is the maintenance leader's).
func (s *Store) Rescue(ctx context.Context, p store.RescueParams) (int, error) {
	now := ts(p.Now)
	var n int
	err := withRetry(ctx, func() error {
		ctx, cancel := s.bound(ctx)
		defer cancel()
		rows, err := s.pool.Query(ctx, s.sql.rescueFind, ts(p.ExpiredBefore))
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(ids) == 0 {
			n = 0
			return err
		}
		var b pgx.Batch
		b.Queue(s.sql.lockKeys, s.lockSeed, []string{}, ids, []string{})
		b.Queue(s.sql.rescue, now, ts(p.ExpiredBefore), now.Format(time.RFC3339Nano)).QueryRow(func(r pgx.Row) error {
			return r.Scan(&n)
		})
		if !s.pollOnly {
			b.Queue(s.sql.notify, s.channel)
		}
		return s.pool.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return 0, fmt.Errorf("postgres: rescue: %w", wrap(err))
	}
	s.maybeRepairLines(ctx)
	return n, nil
}

// NextRunAt returns the earliest run_at among waiting heads of kinds.
func (s *Store) NextRunAt(ctx context.Context, kinds []string) (time.Time, error) {
	if len(kinds) == 0 {
		return time.Time{}, nil
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var next *time.Time
	if err := s.pool.QueryRow(ctx, s.sql.nextRunAt, kinds).Scan(&next); err != nil {
		return time.Time{}, fmt.Errorf("postgres: next run: %w", wrap(err))
	}
	if next == nil {
		return time.Time{}, nil
	}
	return next.UTC(), nil
}

// Get returns one job.
func (s *Store) Get(ctx context.Context, id int64) (*store.Job, error) {
	return s.get(ctx, s.pool, id, time.Now())
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (s *Store) get(ctx context.Context, q querier, id int64, now time.Time) (*store.Job, error) {
	j, err := scanJob(q.QueryRow(ctx, s.sql.get, id), now)
	if errNoRows(err) {
		return nil, fmt.Errorf("job %d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get job %d: %w", id, wrap(err))
	}
	return j, nil
}

// List returns jobs matching p in id order.
func (s *Store) List(ctx context.Context, p store.ListParams) ([]*store.Job, error) {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	where := []string{"j.id > $1"}
	args := []any{p.AfterID}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if p.Kind != "" {
		where = append(where, "j.kind = "+arg(p.Kind))
	}
	if p.Key != "" {
		where = append(where, "j.key = "+arg(p.Key))
	}
	switch p.State {
	case "":
	case store.StateScheduled:
		where = append(where, "j.state = 0 AND j.run_at > "+arg(now))
	case store.StateAvailable:
		where = append(where, "(j.state = 1 OR (j.state = 0 AND j.run_at <= "+arg(now)+"))")
	default:
		code := -1
		for i, n := range stateNames {
			if n == p.State {
				code = i
			}
		}
		if code < 0 {
			return nil, fmt.Errorf("postgres: list: unknown state %q", p.State)
		}
		where = append(where, "j.state = "+arg(code))
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	q := selectJob + ` WHERE ` + strings.Join(where, " AND ") + ` ORDER BY j.id LIMIT ` + arg(limit)
	rows, err := s.pool.Query(ctx, strings.ReplaceAll(q, "_s.", pgx.Identifier{s.schema}.Sanitize()+"."), args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list: %w", wrap(err))
	}
	jobs, err := pgx.CollectRows(rows, scanJobRow(now))
	if err != nil {
		return nil, fmt.Errorf("postgres: list: %w", wrap(err))
	}
	return jobs, nil
}

// Line describes key's line: how many jobs wait (the head included) and
// which job is at the front.
func (s *Store) Line(ctx context.Context, key string) (*store.KeyLine, error) {
	line := &store.KeyLine{Key: key}
	if key == "" {
		return line, nil
	}
	var headID int64
	err := s.pool.QueryRow(ctx, s.q(`SELECT head_id FROM _s.lines WHERE key = $1`), key).Scan(&headID)
	if errNoRows(err) {
		return line, nil
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: line: %w", wrap(err))
	}
	if line.Head, err = s.get(ctx, s.pool, headID, time.Now()); err != nil {
		return nil, fmt.Errorf("postgres: line: %w", err)
	}
	err = s.pool.QueryRow(ctx, s.q(`SELECT count(*) FROM _s.jobs WHERE key = $1 AND key <> '' AND (state IN (0, 1, 3) OR id = $2)`),
		key, headID).Scan(&line.Pending)
	if err != nil {
		return nil, fmt.Errorf("postgres: line: %w", wrap(err))
	}
	return line, nil
}

// q fills the schema into an ad hoc statement.
func (s *Store) q(sql string) string {
	return strings.ReplaceAll(sql, "_s.", pgx.Identifier{s.schema}.Sanitize()+".")
}

// headOf is a line row as an operator action reads it (under lock).
type headOf struct {
	id      int64
	due     time.Time
	blocked int16
	exists  bool
}

// lockJob starts an operator action on job id: it takes the job key's
// advisory lock and line row lock (the order every line writer uses) and
// then reads the job, so what it sees cannot change under it.
func (s *Store) lockJob(ctx context.Context, tx pgx.Tx, id int64, now time.Time) (*store.Job, headOf, error) {
	var h headOf
	var key string
	err := tx.QueryRow(ctx, s.q(`SELECT key FROM _s.jobs WHERE id = $1`), id).Scan(&key)
	if errNoRows(err) {
		return nil, h, fmt.Errorf("job %d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, h, err
	}
	if key != "" {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, $2))`, key, s.lockSeed); err != nil {
			return nil, h, err
		}
		err := tx.QueryRow(ctx, s.q(`SELECT head_id, due_at, blocked FROM _s.lines WHERE key = $1 FOR UPDATE`), key).
			Scan(&h.id, &h.due, &h.blocked)
		switch {
		case errNoRows(err):
		case err != nil:
			return nil, h, err
		default:
			h.exists = true
		}
	}
	j, err := s.get(ctx, tx, id, now)
	return j, h, err
}

// advanceLine moves key's line to its first job still in line, or drops
// the line when none is left.
func (s *Store) advanceLine(ctx context.Context, tx pgx.Tx, key string) error {
	_, err := tx.Exec(ctx, s.q(`WITH n AS (
			SELECT id, kind, run_at, due_at FROM _s.jobs WHERE key = $1 AND key <> '' AND state IN (0, 1, 3) ORDER BY due_at, id LIMIT 1
		), moved AS (
			UPDATE _s.lines l SET head_id = n.id, kind = n.kind, run_at = n.run_at, due_at = n.due_at, blocked = 0
			FROM n WHERE l.key = $1
		)
		DELETE FROM _s.lines WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM n)`), key)
	return err
}

// inTx runs fn in a transaction, again after transient conflicts.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return withRetry(ctx, func() error { return pgx.BeginFunc(ctx, s.pool, fn) })
}

// Retry makes a job run again now with a fresh set of attempts. The head
// of a line (a waiting head or a blocking dead letter) keeps its place; any
// other job (re)joins its key's line behind its head, as if enqueued now.
func (s *Store) Retry(ctx context.Context, id int64, now time.Time) (*store.Job, error) {
	now = ts(now)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		j, line, err := s.lockJob(ctx, tx, id, now)
		if err != nil {
			return err
		}
		if j.State == store.StateRunning || j.State == store.StateCompleted {
			return fmt.Errorf("retry job %d (%s): %w", id, j.State, store.ErrWrongState)
		}
		if j.Key == "" || (line.exists && line.id == id) {
			if _, err := tx.Exec(ctx, s.q(`UPDATE _s.jobs SET state = 1, run_at = $2, attempt = 0, finished_at = NULL
				WHERE id = $1`), id, now); err != nil {
				return err
			}
			if j.Key == "" {
				return nil
			}
			_, err := tx.Exec(ctx, s.q(`UPDATE _s.lines SET run_at = $2, blocked = 0 WHERE key = $1`), j.Key, now)
			return err
		}
		due := now
		if line.exists && (due.Before(line.due) || (due.Equal(line.due) && id < line.id)) {
			due = line.due.Add(time.Microsecond)
		}
		if _, err := tx.Exec(ctx, s.q(`UPDATE _s.jobs SET state = 1, run_at = $2, due_at = $3, attempt = 0, finished_at = NULL
			WHERE id = $1`), id, now, due); err != nil {
			return err
		}
		if line.exists {
			return nil
		}
		_, err = tx.Exec(ctx, s.q(`INSERT INTO _s.lines (key, head_id, kind, run_at, due_at) VALUES ($1, $2, $3, $4, $5)`),
			j.Key, id, j.Kind, now, due)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", wrap(err))
	}
	s.notifyNow(ctx)
	return s.get(ctx, s.pool, id, now)
}

// Cancel finalizes a job that has not started (or a blocking dead letter)
// and lets its key's line advance.
func (s *Store) Cancel(ctx context.Context, id int64, now time.Time) (*store.Job, error) {
	now = ts(now)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		j, line, err := s.lockJob(ctx, tx, id, now)
		if err != nil {
			return err
		}
		head := line.exists && line.id == id
		blocking := j.State == store.StateDiscarded && head
		if j.State == store.StateRunning || (j.State.Finalized() && !blocking) {
			return fmt.Errorf("cancel job %d (%s): %w", id, j.State, store.ErrWrongState)
		}
		if _, err := tx.Exec(ctx, s.q(`UPDATE _s.jobs SET state = 6, finished_at = $2 WHERE id = $1`), id, now); err != nil {
			return err
		}
		if !head {
			return nil
		}
		return s.advanceLine(ctx, tx, j.Key)
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", wrap(err))
	}
	s.notifyNow(ctx)
	return s.get(ctx, s.pool, id, now)
}

// notifyNow tells other nodes that work may be ready (after an operator
// action). A lost notification only delays: engines poll too.
func (s *Store) notifyNow(ctx context.Context) {
	if !s.pollOnly {
		_, _ = s.pool.Exec(ctx, s.sql.notify, s.channel)
	}
}

// Prune deletes finalized jobs past retention and frees expired
// idempotency keys, at most Limit rows of each per call. A dead letter that
// blocks its key is kept.
func (s *Store) Prune(ctx context.Context, p store.PruneParams) (int, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 10000
	}
	var total int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		total = 0
		for _, d := range []struct {
			states string
			before time.Time
		}{{"(4, 6)", p.CompletedBefore}, {"(5)", p.DiscardedBefore}} {
			if d.before.IsZero() || total >= int64(limit) {
				continue
			}
			tag, err := tx.Exec(ctx, s.q(`DELETE FROM _s.jobs WHERE id IN (
				SELECT id FROM _s.jobs WHERE state >= 4 AND state IN `+d.states+` AND finished_at < $1
					AND id NOT IN (SELECT head_id FROM _s.lines WHERE blocked = 1)
				ORDER BY finished_at LIMIT $2)`), ts(d.before), int64(limit)-total)
			if err != nil {
				return err
			}
			total += tag.RowsAffected()
		}
		if !p.IdempotencyBefore.IsZero() {
			_, err := tx.Exec(ctx, s.q(`UPDATE _s.jobs SET idempotency_key = NULL WHERE id IN (
				SELECT id FROM _s.jobs WHERE idempotency_key IS NOT NULL AND created_at < $1 LIMIT $2)`),
				ts(p.IdempotencyBefore), limit)
			return err
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("postgres: prune: %w", wrap(err))
	}
	return int(total), nil
}

// Stats counts jobs by kind and state. It scans the jobs table: call it
// periodically, not per request.
func (s *Store) Stats(ctx context.Context, now time.Time) (*store.Stats, error) {
	st := &store.Stats{ByKindState: map[string]map[store.State]int64{}}
	rows, err := s.pool.Query(ctx, s.q(`SELECT kind, CASE WHEN state = 0 AND run_at <= $1 THEN 1 ELSE state END AS st, count(*)
		FROM _s.jobs GROUP BY 1, 2`), now)
	if err != nil {
		return nil, fmt.Errorf("postgres: stats: %w", wrap(err))
	}
	var (
		kind  string
		state int16
		n     int64
	)
	_, err = pgx.ForEachRow(rows, []any{&kind, &state, &n}, func() error {
		if state < 0 || int(state) >= len(stateNames) {
			return fmt.Errorf("unknown state %d", state)
		}
		if st.ByKindState[kind] == nil {
			st.ByKindState[kind] = map[store.State]int64{}
		}
		st.ByKindState[kind][stateNames[state]] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: stats: %w", wrap(err))
	}
	var oldest *time.Time
	err = s.pool.QueryRow(ctx, s.q(`SELECT
		(SELECT count(*) FROM _s.lines WHERE ready_id IS NOT NULL AND ready_at <= $1) +
		(SELECT count(*) FROM _s.jobs WHERE key = '' AND state IN (0, 1, 3) AND run_at <= $1),
		(SELECT min(due_at) FROM _s.jobs WHERE state IN (0, 1, 3))`), now).Scan(&st.ReadyKeys, &oldest)
	if err != nil {
		return nil, fmt.Errorf("postgres: stats: %w", wrap(err))
	}
	if oldest != nil {
		st.OldestPendingDueAt = oldest.UTC()
	}
	return st, nil
}
