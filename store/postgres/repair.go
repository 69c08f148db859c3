package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// LineRepair counts what RepairLines changed.
type LineRepair struct {
	Unblocked int // lines marked running whose head was not running
	Moved     int // jobs that stood ahead of their line's head, moved behind it
	Created   int // lines created for keys with jobs in line but no line
	Advanced  int // lines whose head had finished, moved to their next job or dropped
}

// Total is the number of repairs.
func (r LineRepair) Total() int { return r.Unblocked + r.Moved + r.Created + r.Advanced }

// repairEvery is how often the maintenance leader's Rescue also checks
// the lines: the check reads every job still in line.
const repairEvery = time.Minute

// inLineJobs are the ordered jobs still in line: waiting ones (jobs_line)
// and running ones (jobs_running), each part read through its index.
const inLineJobs = `(SELECT * FROM _s.jobs WHERE key <> '' AND state IN (0, 1, 3)
	UNION ALL SELECT * FROM _s.jobs WHERE key <> '' AND state = 2)`

// repairFindSQL returns the keys whose line breaks an invariant every
// writer keeps (each writes a job and its line in one transaction): a job
// in line stands ahead of its line's head (no advance would reach it) or
// has no line at all; a line is marked running though its head is not;
// a line that is not a dead letter's is headed by a finished or missing
// job.
const repairFindSQL = `SELECT j.key FROM ` + inLineJobs + ` j LEFT JOIN _s.lines l ON l.key = j.key
	WHERE (l.key IS NULL OR (j.due_at, j.id) < (l.due_at, l.head_id))
UNION
SELECT l.key FROM _s.lines l LEFT JOIN _s.jobs j ON j.id = l.head_id
	WHERE j.id IS NULL OR (l.blocked = 2 AND j.state <> 2) OR (l.blocked <> 1 AND j.state >= 4)`

// The repairs, each for the keys $1 (locked first, like any other write
// to lines), each checking again what it repairs.
const (
	repairUnblockSQL = `UPDATE _s.lines l SET blocked = 0 FROM _s.jobs j
		WHERE l.key = ANY($1::text[]) AND j.id = l.head_id AND l.blocked = 2 AND j.state IN (0, 1, 3)`
	repairAdvanceSQL = `WITH bad AS (
		SELECT l.key FROM _s.lines l LEFT JOIN _s.jobs j ON j.id = l.head_id
		WHERE l.key = ANY($1::text[]) AND l.blocked <> 1 AND (j.id IS NULL OR j.state >= 4)
	), n AS (
		SELECT DISTINCT ON (x.key) x.key, x.id, x.kind, x.run_at, x.due_at, x.state FROM ` + inLineJobs + ` x JOIN bad USING (key)
		ORDER BY x.key, x.due_at, x.id
	), moved AS (
		UPDATE _s.lines l SET head_id = n.id, kind = n.kind, run_at = n.run_at, due_at = n.due_at,
			blocked = CASE WHEN n.state = 2 THEN 2 ELSE 0 END
		FROM n WHERE l.key = n.key RETURNING l.key
	), dropped AS (
		DELETE FROM _s.lines l USING bad WHERE l.key = bad.key AND NOT EXISTS (SELECT 1 FROM n WHERE n.key = bad.key)
		RETURNING l.key
	)
	SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM dropped)`
	repairCreateSQL = `INSERT INTO _s.lines (key, head_id, kind, run_at, due_at, blocked)
		SELECT DISTINCT ON (j.key) j.key, j.id, j.kind, j.run_at, j.due_at, CASE WHEN j.state = 2 THEN 2 ELSE 0 END
		FROM ` + inLineJobs + ` j WHERE j.key = ANY($1::text[])
			AND NOT EXISTS (SELECT 1 FROM _s.lines l WHERE l.key = j.key)
		ORDER BY j.key, j.due_at, j.id`
)

// RepairLines finds lines that break the invariants the driver's writers
// keep and repairs them: a line marked running whose head is not running
// becomes ready; a job standing ahead of its line's head moves behind it
// (as an insert's newcomer does); a key with jobs in line but no line gets
// one; a line headed by a finished job moves to the next. None of this
// happens unless a writer has a bug: it is a safety net, so that such a
// bug delays a key instead of holding it for ever. The maintenance
// leader's Rescue runs it every minute and logs what it repaired.
func (s *Store) RepairLines(ctx context.Context) (LineRepair, error) {
	var rep LineRepair
	err := withRetry(ctx, func() error {
		ctx, cancel := s.bound(ctx)
		defer cancel()
		rep = LineRepair{}
		rows, err := s.pool.Query(ctx, s.q(repairFindSQL))
		if err != nil {
			return err
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(keys) == 0 {
			return err
		}
		var b pgx.Batch
		b.Queue(s.sql.lockKeys, s.lockSeed, keys, []int64{}, []string{})
		count := func(n *int) func(pgconn.CommandTag) error {
			return func(t pgconn.CommandTag) error { *n = int(t.RowsAffected()); return nil }
		}
		b.Queue(s.q(repairUnblockSQL), keys).Exec(count(&rep.Unblocked))
		b.Queue(s.q(repairAdvanceSQL), keys).QueryRow(func(r pgx.Row) error { return r.Scan(&rep.Advanced) })
		b.Queue(s.q(repairCreateSQL), keys).Exec(count(&rep.Created))
		b.Queue(s.sql.keepBehind, keys, time.Time{}).Exec(count(&rep.Moved))
		if !s.pollOnly {
			b.Queue(s.sql.notify, s.channel)
		}
		return s.pool.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return LineRepair{}, fmt.Errorf("postgres: repair lines: %w", wrap(err))
	}
	return rep, nil
}

// maybeRepairLines runs RepairLines when repairEvery has passed since the
// last run, logging what it repaired; errors are logged, not returned:
// the repair must not hold up the rescue.
func (s *Store) maybeRepairLines(ctx context.Context) {
	now := time.Now()
	s.repairMu.Lock()
	due := now.Sub(s.lastRepair) >= repairEvery
	if due {
		s.lastRepair = now
	}
	s.repairMu.Unlock()
	if !due {
		return
	}
	rep, err := s.RepairLines(ctx)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			s.log.Warn("line repair failed", "err", err)
		}
	case rep.Total() > 0:
		s.log.Warn("repaired lines that broke the store's invariants (a bug: please report it)",
			"unblocked", rep.Unblocked, "moved", rep.Moved, "created", rep.Created, "advanced", rep.Advanced)
	}
}
