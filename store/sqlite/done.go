package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/heraldmq/herald/store"
)

// Completions of ordered jobs are logged, not written into their job rows
// at once. Under load the heads of a thousand lines sit all over the jobs
// table, so marking each completed job dirtied about one page per job,
// and writing those pages to the WAL was half of the store loop's work. A
// cycle instead appends one row to herald_done_log holding all its
// completions; they are kept in memory as well (doneLog), and reads show
// them through overlay. Once enough have gathered, the oldest are folded
// into their job rows in id order, many rows per page, and their log rows
// deleted, in the same transaction.
//
// Nothing reads a completed job's row on the hot path: a completed job is
// behind its line's head, and lines are only ever read from the head on.
// Readers that filter or count by state (List, Stats, Line) and Prune fold
// everything first. Open folds what a previous process left in the log.
//
// Unordered jobs are completed in place: their claims read the state.

// defaultFoldAt is how many logged completions trigger a fold;
// defaultFoldChunk is the least a fold takes (whole log rows, oldest
// first). Store.foldAt and foldChunk hold them (tests lower them).
const (
	defaultFoldAt    = 16384
	defaultFoldChunk = 8192
)

type doneEntry struct {
	attempt             int
	startedUS, finishUS int64
}

// doneBatch is one log row: its sequence number and the ids it completed.
type doneBatch struct {
	seq int64
	ids []int64
}

// doneLog holds the logged completions not folded yet. The map is read by
// any reader (under mu); batches and lastSeq change only under the store's
// exchangeMu.
type doneLog struct {
	mu      sync.Mutex
	byID    map[int64]doneEntry
	batches []doneBatch
	lastSeq int64
}

func (d *doneLog) init() { d.byID = map[int64]doneEntry{} }

// add records a committed log row.
func (d *doneLog) add(seq, finishUS int64, done [][3]int64) {
	if len(done) == 0 {
		return
	}
	ids := make([]int64, len(done))
	d.mu.Lock()
	for i, c := range done {
		ids[i] = c[0]
		d.byID[c[0]] = doneEntry{attempt: int(c[1]), startedUS: c[2], finishUS: finishUS}
	}
	d.mu.Unlock()
	d.batches = append(d.batches, doneBatch{seq: seq, ids: ids})
}

// len is how many completions are logged and not folded.
func (d *doneLog) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.byID)
}

// lookup returns id's logged completion, if any.
func (d *doneLog) lookup(id int64) (doneEntry, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.byID[id]
	return e, ok
}

// snapshot copies the logged completions, for a reader of many rows.
func (d *doneLog) snapshot() map[int64]doneEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.byID)
}

// apply shows the logged completion e on j, read from its stale row.
//
// Readers take what they overlay before they read the row, in the order the
// writer undoes it: the claim first, then the logged completion (Exchange
// logs a completion, then ends the claim). A completion in the log was
// committed, so a row read afterwards holds what the same transaction wrote
// (the attempt's output); looked up after the read, it could be paired with
// a row read before the commit. And a claim gone by the time the log is
// looked at means the completion is there: the job never reads as the
// pending state its row keeps until the fold.
func (e doneEntry) apply(j *store.Job) *store.Job {
	j.State = store.StateCompleted
	j.Attempt = e.attempt
	j.StartedAt = fromMicros(e.startedUS)
	j.FinishedAt = fromMicros(e.finishUS)
	j.Head = false
	return j
}

// oldest returns the fold of the oldest log rows holding at least n
// completions (all of them if n <= 0): the last sequence number taken and
// the rows to write, [[id, attempt, started_at, finished_at], ...] in id
// order.
func (d *doneLog) oldest(n int) (int64, [][4]int64) {
	var seq int64
	var rows [][4]int64
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range d.batches {
		if n > 0 && len(rows) >= n {
			break
		}
		seq = b.seq
		for _, id := range b.ids {
			e := d.byID[id]
			rows = append(rows, [4]int64{id, int64(e.attempt), e.startedUS, e.finishUS})
		}
	}
	slices.SortFunc(rows, func(a, b [4]int64) int { return cmp.Compare(a[0], b[0]) })
	return seq, rows
}

// drop forgets the log rows up to seq, once their fold has committed.
func (d *doneLog) drop(seq int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := 0
	for ; i < len(d.batches) && d.batches[i].seq <= seq; i++ {
		for _, id := range d.batches[i].ids {
			delete(d.byID, id)
		}
	}
	d.batches = slices.Delete(d.batches, 0, i)
}

const (
	logDoneSQL = `INSERT INTO herald_done_log (seq, at, body) VALUES (?1, ?2, ?3)`
	dropLogSQL = `DELETE FROM herald_done_log WHERE seq <= ?1`
)

// foldRows writes completions (id, attempt, started_at, finished_at) into
// their rows.
var foldRows = newMultiRow(0, 4, []int{512, 64, 8, 1}, func(values string) string {
	return `WITH v (id, attempt, started_at, finished_at) AS (VALUES ` + values + `)
		UPDATE OR ROLLBACK herald_jobs SET state = 4, attempt = v.attempt, started_at = v.started_at,
		finished_at = v.finished_at FROM v WHERE herald_jobs.id = v.id`
})

// logCompleted appends this cycle's completions [[id, attempt, started_at],
// ...] to the log under the next sequence number, which it returns.
func (w *lineWriter) logCompleted(nowUS int64, done [][3]int64) (int64, error) {
	b, err := json.Marshal(done)
	if err != nil {
		return 0, err
	}
	seq := w.store.done.lastSeq + 1
	if err := w.exec(logDoneSQL, seq, nowUS, string(b)); err != nil {
		return 0, err
	}
	return seq, nil
}

// fold writes the oldest logged completions (at least n; all if n <= 0)
// into their rows and deletes their log rows. It returns the last sequence
// number folded (0 if none), for doneLog.drop once the transaction commits.
func (w *lineWriter) fold(n int) (int64, error) {
	seq, rows := w.store.done.oldest(n)
	if len(rows) == 0 {
		return 0, nil
	}
	// Bound values: JSON extraction cost more than the row writes.
	args := make([]any, 0, len(rows)*foldRows.cols)
	for _, r := range rows {
		args = append(args, r[0], r[1], r[2], r[3])
	}
	if err := w.execRows(foldRows, nil, args, nil); err != nil {
		return 0, err
	}
	if err := w.exec(dropLogSQL, seq); err != nil {
		return 0, err
	}
	return seq, nil
}

// foldAll writes every logged completion into its row, so that a reader
// filtering or counting by state sees them.
func (s *Store) foldAll(ctx context.Context) error {
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	if s.done.len() == 0 {
		return nil
	}
	var seq int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		w := &lineWriter{ctx: ctx, tx: tx, store: s, claims: &s.claims}
		defer w.close()
		var err error
		seq, err = w.fold(0)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: fold completions: %w", err)
	}
	s.done.drop(seq)
	return nil
}

// loadDoneLog folds what a previous process logged and did not fold. It
// runs in Open, before the lines are repaired (they read job states).
func (s *Store) loadDoneLog(ctx context.Context) error {
	rows, err := s.writer.QueryContext(ctx, `SELECT seq, at, body FROM herald_done_log ORDER BY seq`)
	if err != nil {
		return fmt.Errorf("sqlite: read completion log: %w", wrap(err))
	}
	for rows.Next() {
		var seq, at int64
		var body string
		if err := rows.Scan(&seq, &at, &body); err != nil {
			rows.Close()
			return fmt.Errorf("sqlite: read completion log: %w", err)
		}
		var done [][3]int64
		if err := json.Unmarshal([]byte(body), &done); err != nil {
			rows.Close()
			return fmt.Errorf("sqlite: completion log row %d: %w", seq, err)
		}
		s.done.add(seq, at, done)
		s.done.lastSeq = seq
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("sqlite: read completion log: %w", err)
	}
	if s.done.lastSeq == 0 {
		// Sequence numbers restart when the log is empty; that is fine,
		// they only order the rows present.
		return nil
	}
	return s.foldAll(ctx)
}
