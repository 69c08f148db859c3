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

// jobColumnsJ lists a job's columns on alias j; every query that scans a
// job adds a last column telling whether it is at the head of its line.
const jobColumnsJ = `j.id, j.kind, j.key, j.payload, j.state, j.attempt, j.max_attempts, j.run_at, j.due_at,
	j.idempotency_key, j.errors, j.created_at, j.started_at, j.finished_at, j.output`

// selectJob reads jobs with their head flag: an unordered job is its own
// head until finalized; an ordered one is the head if its line says so.
const selectJob = `SELECT ` + jobColumnsJ + `,
	CASE WHEN j.kh = 0 THEN j.state < 4
	ELSE EXISTS (SELECT 1 FROM herald_lines l WHERE l.kh = j.kh AND l.head_id = j.id) END
	FROM herald_jobs j`

type scanner interface{ Scan(dest ...any) error }

func scanJob(row scanner, now time.Time) (*store.Job, error) {
	var (
		j                     store.Job
		state                 int
		head                  bool
		runAt, dueAt, created int64
		idem, errs            sql.NullString
		started, finished     sql.NullInt64
		payload, output       []byte
	)
	err := row.Scan(&j.ID, &j.Kind, &j.Key, &payload, &state, &j.Attempt, &j.MaxAttempts,
		&runAt, &dueAt, &idem, &errs, &created, &started, &finished, &output, &head)
	if err != nil {
		return nil, err
	}
	j.Payload = payload
	if output != nil {
		j.Output = output
	}
	j.State = stateNames[state]
	j.Head = head
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
// keeps its place at the head of its line, ready to run again now.
func (s *Store) Rescue(ctx context.Context, p store.RescueParams) (int, error) {
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	expired := s.claims.expired(micros(p.ExpiredBefore))
	if len(expired) == 0 {
		return 0, nil
	}
	at := p.Now.UTC().Format(time.RFC3339Nano)
	nowUS := micros(p.Now)
	ids := make([]int64, 0, len(expired))
	err := s.inLineTx(ctx, func(tx *sql.Tx) error {
		for id, c := range expired {
			msg := "interrupted: lease of " + c.owner + " expired (worker stalled)"
			if _, err := tx.ExecContext(ctx, retrySQL, id, c.startedUS, nowUS, nowUS, msg, at); err != nil {
				return err
			}
			if c.kh != 0 {
				if _, err := tx.ExecContext(ctx, moveHeadSQL, c.kh, id, c.kind, nowUS); err != nil {
					return err
				}
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

// NextRunAt returns the earliest run_at among waiting heads of kinds,
// ignoring the ones running here.
func (s *Store) NextRunAt(ctx context.Context, kinds []string) (time.Time, error) {
	unordered := s.claims.running(nil)
	var next int64
	for _, k := range kinds {
		v, err := earliestWaiting(ctx, k, unordered[k], s.nextLineRun, s.nextUnorderedRun)
		if err != nil {
			return time.Time{}, fmt.Errorf("sqlite: next run: %w", err)
		}
		if v != 0 && (next == 0 || v < next) {
			next = v
		}
	}
	if next == 0 {
		return time.Time{}, nil
	}
	return fromMicros(next), nil
}

// earliestWaiting is the earliest run_at (0: none) among kind's ready line
// heads and its unordered jobs not running here (running: their ids), read
// with lineRun (nextLineRunSQL) and unorderedRun (nextUnorderedRunSQL): the
// reader's statements, or a transaction's.
func earliestWaiting(ctx context.Context, kind string, running []int64, lineRun, unorderedRun *sql.Stmt) (int64, error) {
	if running == nil {
		running = []int64{}
	}
	exclude, err := json.Marshal(running)
	if err != nil {
		return 0, err
	}
	var earliest int64
	for _, q := range []struct {
		st   *sql.Stmt
		args []any
	}{{lineRun, []any{kind}}, {unorderedRun, []any{kind, string(exclude)}}} {
		var v int64
		err := q.st.QueryRowContext(ctx, q.args...).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if earliest == 0 || v < earliest {
			earliest = v
		}
	}
	return earliest, nil
}

// Get returns one job.
func (s *Store) Get(ctx context.Context, id int64) (*store.Job, error) {
	return s.get(ctx, s.reader, id, time.Now())
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) get(ctx context.Context, q queryer, id int64, now time.Time) (*store.Job, error) {
	v := s.viewOf(id) // before the row: see doneEntry.apply
	j, err := scanJob(q.QueryRowContext(ctx, selectJob+` WHERE j.id = ?`, id), now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("job %d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get job %d: %w", id, err)
	}
	return s.show(j, v), nil
}

// view is what this process knows of a job beyond its row: that it runs
// here (a claim), or that it completed (logged, not folded yet).
type view struct {
	claim     claim
	running   bool
	done      doneEntry
	completed bool
}

// viewOf looks id up: the claim, then the logged completion, in that
// order (see doneEntry.apply). Readers call it before reading the row.
func (s *Store) viewOf(id int64) view {
	var v view
	v.claim, v.running = s.claims.get(id)
	v.done, v.completed = s.done.lookup(id)
	return v
}

// show overlays v on j, read after v was taken.
func (s *Store) show(j *store.Job, v view) *store.Job {
	if v.completed {
		return v.done.apply(j)
	}
	return s.claims.overlayWith(j, v.claim, v.running)
}

// List returns jobs matching p in id order.
func (s *Store) List(ctx context.Context, p store.ListParams) ([]*store.Job, error) {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	if p.State != "" {
		// Filtering by state needs the logged completions in their rows.
		if err := s.foldAll(ctx); err != nil {
			return nil, err
		}
	}
	var (
		where = []string{"j.id > ?"}
		args  = []any{p.AfterID}
	)
	if p.Kind != "" {
		where = append(where, "j.kind = ?")
		args = append(args, p.Kind)
	}
	if p.Key != "" {
		where = append(where, "j.kh = ? AND j.key = ?")
		args = append(args, lineID(p.Key), p.Key)
	}
	if p.State != "" {
		code, ok := stateCode(p.State)
		if !ok {
			return nil, fmt.Errorf("sqlite: list: unknown state %q", p.State)
		}
		switch code {
		case stRunning:
			// Running lives in memory: list exactly the claimed ids.
			b, err := json.Marshal(s.claims.ids())
			if err != nil {
				return nil, err
			}
			where = append(where, "j.id IN (SELECT value FROM json_each(?))")
			args = append(args, string(b))
		case stScheduled:
			where = append(where, "j.state = 0 AND j.run_at > ?")
			args = append(args, micros(now))
		case stAvailable:
			where = append(where, "(j.state = 1 OR (j.state = 0 AND j.run_at <= ?))")
			args = append(args, micros(now))
		default:
			where = append(where, "j.state = ?")
			args = append(args, code)
		}
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	// Claims, then logged completions, then the rows: see doneEntry.apply.
	claims := s.claims.snapshot()
	done := s.done.snapshot()
	// Running jobs are stored as pending: read enough extra rows to drop
	// them from a pending-state page and still fill it.
	args = append(args, limit+s.claims.len())
	rows, err := s.reader.QueryContext(ctx, selectJob+` WHERE `+strings.Join(where, " AND ")+` ORDER BY j.id LIMIT ?`, args...)
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
		var v view
		v.claim, v.running = claims[j.ID]
		v.done, v.completed = done[j.ID]
		j = s.show(j, v)
		if p.State != "" && j.State != p.State {
			continue
		}
		jobs = append(jobs, j)
	}
	return jobs, rows.Err()
}

// Line describes key's line: how many jobs wait (the head included) and
// which job is at the front.
func (s *Store) Line(ctx context.Context, key string) (*store.KeyLine, error) {
	line := &store.KeyLine{Key: key}
	if key == "" {
		return line, nil
	}
	var headID int64
	err := s.reader.QueryRowContext(ctx, `SELECT head_id FROM herald_lines WHERE kh = ?`, lineID(key)).Scan(&headID)
	if errors.Is(err, sql.ErrNoRows) {
		return line, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: line: %w", err)
	}
	if id, ok := s.claims.runningOn(lineID(key)); ok {
		headID = id // the line row may still name the job before a hand-off
	}
	if line.Head, err = s.get(ctx, s.reader, headID, time.Now()); err != nil {
		return nil, fmt.Errorf("sqlite: line: %w", err)
	}
	// Count from the head on: everything before it is finished.
	err = s.reader.QueryRowContext(ctx, `SELECT count(*) FROM herald_jobs
		WHERE kh = ? AND kh <> 0 AND (due_at, id) >= (?, ?) AND (state < 4 OR id = ?)`,
		lineID(key), micros(line.Head.DueAt), headID, headID).Scan(&line.Pending)
	if err != nil {
		return nil, fmt.Errorf("sqlite: line: %w", err)
	}
	return line, nil
}

// Retry makes a job run again now with a fresh set of attempts. The head
// of a line (a waiting head or a blocking dead letter) keeps its place; any
// other job (re)joins its key's line as if enqueued now.
func (s *Store) Retry(ctx context.Context, id int64, now time.Time) (*store.Job, error) {
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	nowUS := micros(now)
	var out *store.Job
	err := s.inLineTx(ctx, func(tx *sql.Tx) (err error) {
		// Read the result inside the transaction: once it commits, the job
		// may run, finish and be pruned before a later read.
		defer func() {
			if err == nil {
				out, err = s.get(ctx, tx, id, now)
			}
		}()
		j, err := s.get(ctx, tx, id, now)
		if err != nil {
			return err
		}
		if j.State == store.StateRunning || j.State == store.StateCompleted {
			return fmt.Errorf("retry job %d (%s): %w", id, j.State, store.ErrWrongState)
		}
		if j.Key == "" || j.Head {
			if _, err := tx.ExecContext(ctx, `UPDATE herald_jobs SET state = 1, run_at = ?, attempt = 0, finished_at = NULL
				WHERE id = ?`, nowUS, id); err != nil {
				return err
			}
			if j.Key != "" {
				_, err = tx.ExecContext(ctx, `UPDATE herald_lines SET run_at = ?, blocked = 0 WHERE kh = ?`, nowUS, lineID(j.Key))
			}
			return err
		}
		w := &lineWriter{ctx: ctx, tx: tx, store: s, claims: &s.claims}
		defer w.close()
		dueUS, err := s.rejoinDue(ctx, tx, j.Key, id, nowUS)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE herald_jobs SET state = 1, run_at = ?1, due_at = ?2, attempt = 0,
			finished_at = NULL WHERE id = ?3`, nowUS, dueUS, id); err != nil {
			return err
		}
		w.arrive(j.Key, lineID(j.Key), id, dueUS, nowUS, j.Kind, nil)
		w.store.memo.forget(lineID(j.Key)) // not followed: read the line again
		return w.flush()
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return out, nil
}

// rejoinDue is the line position for a job (re)joining key's line now: now,
// but never ahead of the line's head or of the job running on it (after a
// hand-off the line row still names the finished job before it).
func (s *Store) rejoinDue(ctx context.Context, tx *sql.Tx, key string, id, nowUS int64) (int64, error) {
	dueUS := nowUS
	after := func(headDue, headID int64) {
		if dueUS < headDue || (dueUS == headDue && id < headID) {
			dueUS = headDue + 1
		}
	}
	var headID, headDue int64
	err := tx.QueryRowContext(ctx, `SELECT j.id, j.due_at FROM herald_lines l JOIN herald_jobs j ON j.id = l.head_id
		WHERE l.kh = ?`, lineID(key)).Scan(&headID, &headDue)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return 0, err
	default:
		after(headDue, headID)
	}
	if running, ok := s.claims.runningOn(lineID(key)); ok {
		if c, ok := s.claims.get(running); ok {
			after(c.dueUS, running)
		}
	}
	return dueUS, nil
}

// Cancel finalizes a job that has not started (or a blocking dead letter)
// and lets its key's line advance.
func (s *Store) Cancel(ctx context.Context, id int64, now time.Time) (*store.Job, error) {
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	var out *store.Job
	err := s.inLineTx(ctx, func(tx *sql.Tx) (err error) {
		// Read the result inside the transaction: once it commits, a short
		// retention may prune the cancelled job before a later read.
		defer func() {
			if err == nil {
				out, err = s.get(ctx, tx, id, now)
			}
		}()
		j, err := s.get(ctx, tx, id, now)
		if err != nil {
			return err
		}
		blocking := j.State == store.StateDiscarded && j.Head
		if j.State == store.StateRunning || (j.State.Finalized() && !blocking) {
			return fmt.Errorf("cancel job %d (%s): %w", id, j.State, store.ErrWrongState)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE herald_jobs SET state = 6, finished_at = ? WHERE id = ?`, micros(now), id); err != nil {
			return err
		}
		if j.Key == "" {
			return nil
		}
		if !j.Head {
			s.memo.forget(lineID(j.Key)) // it leaves the middle of its line
			return nil
		}
		w := &lineWriter{ctx: ctx, tx: tx, store: s, claims: &s.claims}
		defer w.close()
		w.headFinished(lineID(j.Key), micros(j.DueAt), id)
		return w.flush()
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return out, nil
}

// Prune deletes finalized jobs past retention and frees expired
// idempotency keys, at most Limit rows of each per call. A dead letter that
// blocks its key is kept.
func (s *Store) Prune(ctx context.Context, p store.PruneParams) (int, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 10000
	}
	if err := s.foldAll(ctx); err != nil { // retention reads finished_at in the rows
		return 0, err
	}
	// Under exchangeMu, so no cycle inserts between the delete and the note
	// that SQLite's next rowid may no longer follow lastID.
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	var total int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// The newest jobs may be about to go: remember the highest id so it
		// is never handed out again (see Store.lastID). No row when the
		// table is empty: max(id) would be NULL.
		if _, err := tx.ExecContext(ctx, `INSERT INTO herald_meta (name, value)
			SELECT 'id_floor', id FROM herald_jobs WHERE id = (SELECT max(id) FROM herald_jobs)
			ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)`); err != nil {
			return err
		}
		for _, q := range []struct {
			sql string
			at  time.Time
		}{
			// A line row may point at a finished job (a blocking dead
			// letter, or the job before a hand-off): keep those.
			{`DELETE FROM herald_jobs WHERE id IN (SELECT id FROM herald_jobs
				WHERE state >= 4 AND finished_at < ?1 AND state IN (4, 6)
					AND id NOT IN (SELECT head_id FROM herald_lines) LIMIT ?2)`, p.CompletedBefore},
			{`DELETE FROM herald_jobs WHERE id IN (SELECT id FROM herald_jobs
				WHERE state >= 4 AND finished_at < ?1 AND state = 5
					AND id NOT IN (SELECT head_id FROM herald_lines) LIMIT ?2)`, p.DiscardedBefore},
		} {
			if q.at.IsZero() {
				continue
			}
			if total >= int64(limit) {
				break
			}
			res, err := tx.ExecContext(ctx, q.sql, micros(q.at), int64(limit)-total)
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
	if total > 0 {
		s.rowidIsLastID = false // the newest job may be gone
	}
	if err != nil {
		return 0, fmt.Errorf("sqlite: prune: %w", err)
	}
	return int(total), nil
}

// Stats counts jobs by kind and state. It scans the jobs table: call it
// periodically, not per request on a hot path.
func (s *Store) Stats(ctx context.Context, now time.Time) (*store.Stats, error) {
	if err := s.foldAll(ctx); err != nil { // the counts read the rows' states
		return nil, err
	}
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
	// Pending means waiting, so running jobs do not count: behind a running
	// head, the next job in its line is the one waiting.
	heads, err := json.Marshal(s.claims.runningHeads())
	if err != nil {
		return nil, err
	}
	ids, err := json.Marshal(s.claims.ids())
	if err != nil {
		return nil, err
	}
	var ready, readyUnordered int64
	var oldest [3]sql.NullInt64
	err = s.reader.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE l.run_at <= ?1), min(j.due_at)
		FROM herald_lines l JOIN herald_jobs j ON j.id = l.head_id
		WHERE l.blocked = 0`, nowUS).Scan(&ready, &oldest[0])
	if err != nil {
		return nil, fmt.Errorf("sqlite: stats: %w", err)
	}
	err = s.reader.QueryRowContext(ctx, `SELECT min((SELECT j.due_at FROM herald_jobs j
			WHERE j.kh = a.kh AND j.kh <> 0 AND (j.due_at, j.id) > (a.due, a.id) AND j.state < 4
			ORDER BY j.due_at, j.id LIMIT 1))
		FROM (SELECT value ->> 0 AS kh, value ->> 1 AS due, value ->> 2 AS id FROM json_each(?1)) AS a`,
		string(heads)).Scan(&oldest[1])
	if err != nil {
		return nil, fmt.Errorf("sqlite: stats: %w", err)
	}
	err = s.reader.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE run_at <= ?1), min(due_at)
		FROM herald_jobs WHERE key = '' AND state IN (0, 1, 3) AND id NOT IN (SELECT value FROM json_each(?2))`,
		nowUS, string(ids)).Scan(&readyUnordered, &oldest[2])
	if err != nil {
		return nil, fmt.Errorf("sqlite: stats: %w", err)
	}
	st.ReadyKeys = ready + readyUnordered
	for _, o := range oldest {
		if o.Valid && (st.OldestPendingDueAt.IsZero() || o.Int64 < micros(st.OldestPendingDueAt)) {
			st.OldestPendingDueAt = fromMicros(o.Int64)
		}
	}
	s.claims.countRunning(st)
	return st, nil
}
