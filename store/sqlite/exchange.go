package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"time"

	"github.com/heraldmq/herald/store"
)

// The hot-path statements. Lists of ids and line ids travel as one JSON
// array (json_each), rows of several values as multi-row VALUES lists
// (multiRow, batch.go), so a cycle runs a handful of statements whatever
// its size. plan_test.go checks that none of them scans a table.
const (
	moveHeadSQL = `UPDATE herald_lines SET head_id = ?2, kind = ?3, run_at = ?4, blocked = 0 WHERE kh = ?1`

	// claimLinesSQL reads ready heads of one kind, oldest first. A line whose job runs
	// here is marked blocked = 2 (markRunningSQL), which takes it out of the
	// ready index: no running set has to be passed in.
	claimLinesSQL = `SELECT ` + jobColumnsJ + `, 1 FROM herald_lines l JOIN herald_jobs j ON j.id = l.head_id
		WHERE l.kind = ?1 AND l.blocked = 0 AND l.run_at <= ?2
		ORDER BY l.run_at, l.head_id`
	markRunningSQL    = `UPDATE OR ROLLBACK herald_lines SET blocked = 2 WHERE kh IN (SELECT value FROM json_each(?1))`
	claimUnorderedSQL = `SELECT ` + jobColumnsJ + `, 1 FROM herald_jobs j
		WHERE j.key = '' AND j.kind = ?1 AND j.state IN (0, 1, 3) AND j.run_at <= ?2
			AND j.id NOT IN (SELECT value FROM json_each(?3))
		ORDER BY j.run_at, j.id`

	nextLineRunSQL      = `SELECT run_at FROM herald_lines WHERE kind = ?1 AND blocked = 0 ORDER BY run_at LIMIT 1`
	nextUnorderedRunSQL = `SELECT run_at FROM herald_jobs
		WHERE key = '' AND kind = ?1 AND state IN (0, 1, 3) AND id NOT IN (SELECT value FROM json_each(?2))
		ORDER BY run_at, id LIMIT 1`
)

// lineID maps a key to its line: FNV-1a, stable across processes and
// versions. 0 is reserved for unordered jobs.
func lineID(key string) int64 {
	if key == "" {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	if v := int64(h.Sum64()); v != 0 { //nolint:gosec // the bits are the id; sign does not matter
		return v
	}
	return 1
}

// hotStatements are prepared once at Open.
var hotStatements = slices.Concat([]string{moveHeadSQL, claimLinesSQL, claimUnorderedSQL, nextLineRunSQL,
	nextUnorderedRunSQL, markRunningSQL, nextOneSQL, nextManySQL, dropLinesSQL, lineHeadsSQL, logDoneSQL, dropLogSQL},
	insertJobs.statements(), insertJobsAuto.statements(), insertUniform.statements(), insertUniformAuto.statements(),
	insertLines.statements(), moveHeads.statements(), foldRows.statements(), completeRows.statements())

// Statements for failed attempts. ?1 id, ?2 started_at, ?3 now, ?4 retry
// at, ?5 message, ?6 time as text.
const (
	retrySQL = `UPDATE herald_jobs SET state = 3, run_at = ?4, attempt = attempt + 1, started_at = ?2,
		errors = json_insert(coalesce(errors, '[]'), '$[#]', json_object('at', ?6, 'attempt', attempt + 1, 'message', ?5))
		WHERE id = ?1`
	discardSQL = `UPDATE herald_jobs SET state = 5, finished_at = ?3, attempt = attempt + 1, started_at = ?2,
		errors = json_insert(coalesce(errors, '[]'), '$[#]', json_object('at', ?6, 'attempt', attempt + 1, 'message', ?5))
		WHERE id = ?1`
	blockSQL = `UPDATE herald_lines SET head_id = ?2, kind = ?3, run_at = ?4, blocked = 1 WHERE kh = ?1`
)

// Exchange runs a cycle's inserts, finishes and claim in one transaction
// and returns once it is durable.
func (s *Store) Exchange(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, error) {
	res, durable, err := s.ExchangeDeferred(ctx, p)
	if err != nil {
		return nil, err
	}
	if err := durable(); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return res, nil
}

// ExchangeDeferred is Exchange, returning as soon as the transaction is
// committed; it is durable once durable returns nil (store.DeferredSyncer).
func (s *Store) ExchangeDeferred(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, store.Durable, error) {
	if p.Now.IsZero() {
		p.Now = time.Now()
	}
	// One exchange at a time: claims are read and changed around the
	// transaction, and the writer is a single connection anyway.
	s.exchangeMu.Lock()
	defer s.exchangeMu.Unlock()
	var (
		res       *store.ExchangeResult
		done      []int64
		logged    [][3]int64 // completions logged, [id, attempt, started_at]
		loggedSeq int64
		foldedSeq int64
	)
	durable, err := s.commitLineTx(ctx, func(tx *sql.Tx) error {
		res = &store.ExchangeResult{}
		w := &lineWriter{ctx: ctx, tx: tx, store: s, claims: &s.claims}
		defer w.close()
		w.handOffUpTo(p.Now, p.Claim)
		// New lines wait for the final flush, so a key's first job is
		// offered a slot only after the finished heads' successors, which
		// have waited longer.
		w.holdNew = p.Claim != nil
		var err error
		if res.Inserted, err = w.insert(p); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		if res.Finished, done, err = w.finish(p.Now, p.Finishes); err != nil {
			return fmt.Errorf("finish: %w", err)
		}
		if logged = w.logged; len(logged) > 0 {
			if loggedSeq, err = w.logCompleted(micros(p.Now), logged); err != nil {
				return fmt.Errorf("log completions: %w", err)
			}
		}
		if s.done.len() >= s.foldAt {
			if foldedSeq, err = w.fold(s.foldChunk); err != nil {
				return fmt.Errorf("fold completions: %w", err)
			}
		}
		w.holdNew = false
		if err := w.flush(); err != nil {
			return fmt.Errorf("advance lines: %w", err)
		}
		if p.Claim != nil {
			if res.Claimed, err = w.claim(*p.Claim, done); err != nil {
				return fmt.Errorf("claim: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		// Ids may have been handed out for rows that were rolled back.
		s.rowidIsLastID = false
		return nil, nil, fmt.Errorf("sqlite: %w", err)
	}
	if len(p.Inserts) > 0 {
		// Any row written carries the highest id handed out so far: the
		// table's highest rowid is lastID again (a cycle of idempotent
		// repeats only leaves it as it was).
		s.rowidIsLastID = s.rowidIsLastID || insertedAny(res.Inserted)
	}
	// Only a committed transaction changes what this process runs. A
	// completion is shown by the log before its claim goes, so a reader
	// never finds the job neither running nor completed.
	if loggedSeq > 0 {
		s.done.add(loggedSeq, micros(p.Now), logged)
		s.done.lastSeq = loggedSeq
	}
	if foldedSeq > 0 {
		s.done.drop(foldedSeq)
	}
	s.claims.release(done)
	if p.Claim != nil {
		s.claims.add(res.Claimed, p.Claim.Owner, p.Claim.LeaseUntil)
	}
	return res, durable, nil
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

// Claim marks ready heads running (in memory) and returns them.
func (s *Store) Claim(ctx context.Context, p store.ClaimParams) ([]*store.Job, error) {
	res, err := s.Exchange(ctx, store.ExchangeParams{Now: p.Now, Claim: &p})
	if err != nil {
		return nil, err
	}
	return res.Claimed, nil
}

// lineWriter makes a transaction's changes to jobs and lines, collecting
// line moves so they run as set-based statements at the end.
type lineWriter struct {
	ctx    context.Context
	tx     *sql.Tx
	store  *Store
	claims *claimTable
	stmts  map[string]*sql.Stmt // transaction-bound views of the store's prepared statements

	advance  []finishedHead
	arrivals map[int64]*arrival // earliest newcomer per line
	// fresh are the newcomers that open a line (their key had no pending
	// job), written by flush unless holdNew.
	fresh    []*arrival
	holdNew  bool
	newHeads map[int64]bool // arrivals that became their key's head
	// arrived holds copies of the inserted jobs per line, for the memo
	// (nil when it is disabled).
	arrived map[int64][]*store.Job
	// logged collects completed ordered jobs, [id, attempt, started_at],
	// for the completion log (done.go).
	logged [][3]int64

	// Hand-off: when a head finishes and the next job in its line may run
	// now, it is claimed on the spot: no line write, no ready-index round
	// trip. The line row keeps pointing at the finished job while the new
	// one runs (see claims.go); whatever ends that run rewrites it.
	now     time.Time
	offer   *store.ClaimParams
	left    map[string]int   // claim slots left per kind
	total   int              // claim slots left overall
	waiting map[string]int64 // per kind: run_at of the oldest waiting job (0: none); fairness bound
	// unorderedRunning are the unordered jobs running here, per kind, for
	// oldestWaiting (nil until it needs them).
	unorderedRunning map[string][]int64
	handed           []*store.Job
	handKh           []int64
}

type finishedHead struct{ kh, dueUS, id int64 }

type arrival struct {
	kh, id, dueUS, runUS int64
	kind, key            string
	job                  *store.Job // the inserted job, if this cycle inserted it
}

func (w *lineWriter) stmt(q string) (*sql.Stmt, error) {
	if st, ok := w.stmts[q]; ok {
		return st, nil
	}
	var st *sql.Stmt
	if prepared, ok := w.store.stmts[q]; ok {
		st = w.tx.StmtContext(w.ctx, prepared)
	} else {
		var err error
		if st, err = w.tx.PrepareContext(w.ctx, q); err != nil {
			return nil, err
		}
	}
	if w.stmts == nil {
		w.stmts = map[string]*sql.Stmt{}
	}
	w.stmts[q] = st
	return st, nil
}

func (w *lineWriter) exec(q string, args ...any) error {
	st, err := w.stmt(q)
	if err != nil {
		return err
	}
	_, err = st.ExecContext(w.ctx, args...)
	return err
}

func (w *lineWriter) close() {
	for _, st := range w.stmts {
		st.Close() // closes the transaction's view only
	}
}

// arrive notes that job id of key (line kh) now stands in line at (due,
// id). job is the job as inserted, or nil when it rejoins its line.
func (w *lineWriter) arrive(key string, kh, id, dueUS, runUS int64, kind string, job *store.Job) {
	if w.arrivals == nil {
		w.arrivals = map[int64]*arrival{}
	}
	a := w.arrivals[kh]
	if a == nil || dueUS < a.dueUS || (dueUS == a.dueUS && id < a.id) {
		w.arrivals[kh] = &arrival{kh: kh, id: id, dueUS: dueUS, runUS: runUS, kind: kind, key: key, job: job}
	}
}

// headFinished notes that the head of line kh, at (due, id), is finished.
func (w *lineWriter) headFinished(kh, dueUS, id int64) {
	w.advance = append(w.advance, finishedHead{kh: kh, dueUS: dueUS, id: id})
}

// flush advances finished lines, then places arrivals: a key without a
// line gets one; a head that has never run and is due later than a
// newcomer gives the newcomer its place.
func (w *lineWriter) flush() error {
	if len(w.advance) > 0 {
		if err := w.advanceLines(); err != nil {
			return err
		}
		w.advance = w.advance[:0]
	}
	if len(w.arrivals) > 0 {
		if err := w.placeArrivals(); err != nil {
			return err
		}
		clear(w.arrivals)
	}
	if w.holdNew || len(w.fresh) == 0 {
		return nil
	}
	return w.openLines()
}

// openLines writes the lines of keys that had no pending job. A line whose
// first job may run now is claimed on the spot, as handOff decides: it is
// written running and never passes through the ready index, which saves the
// claim's read and its mark for every job of a key that is not busy.
func (w *lineWriter) openLines() error {
	// Oldest first, should slots run short.
	slices.SortFunc(w.fresh, func(a, b *arrival) int { return cmpPlace(a.runUS, a.id, b.runUS, b.id) })
	created := make([]any, 0, len(w.fresh)*insertLines.cols)
	for _, a := range w.fresh {
		blocked := 0
		if a.job != nil {
			j := *a.job
			j.Head = true
			handed, err := w.handOff(a.kh, &j)
			if err != nil {
				return err
			}
			if handed {
				blocked = 2
			}
		}
		created = append(created, a.kh, a.key, a.id, a.kind, a.runUS, blocked)
	}
	w.fresh = w.fresh[:0]
	return w.execRows(insertLines, nil, created, nil)
}

// advanceLines moves each finished head's line to its next job, hands
// that job off when it may run now, and drops lines with no job left.
func (w *lineWriter) advanceLines() error {
	next := make([]*store.Job, len(w.advance))
	// Remembered lines know their next job; the others are read.
	var heads []finishedHead
	var asked []int // index in w.advance of each of heads
	for i, h := range w.advance {
		if j, ok := w.store.memo.pop(h.kh, h.dueUS, h.id, micros(w.now)); ok {
			next[i] = j
			continue
		}
		heads = append(heads, h)
		asked = append(asked, i)
	}
	if len(heads) > 0 {
		if err := w.readNext(heads, asked, next); err != nil {
			return err
		}
	}
	var drops []int64
	var moves []any
	for i, h := range w.advance {
		j := next[i]
		if j == nil {
			drops = append(drops, h.kh)
			continue
		}
		handed, err := w.handOff(h.kh, j)
		if err != nil {
			return err
		}
		if !handed {
			moves = append(moves, h.kh, j.ID, j.Kind, micros(j.RunAt))
		}
	}
	if len(drops) > 0 {
		if err := w.exec(dropLinesSQL, jsonInts(drops)); err != nil {
			return err
		}
	}
	return w.execRows(moveHeads, nil, moves, nil)
}

// readNext reads the job after each finished head of heads into
// next[asked[i]], i being the head's index in heads, and lets the memo keep
// the jobs read behind it.
func (w *lineWriter) readNext(heads []finishedHead, asked []int, next []*store.Job) error {
	// Read ahead only while the memo has room to keep what is read.
	limit, q := 1, nextOneSQL
	if w.store.memo.roomFor(len(heads)*readAhead, 192) {
		limit, q = readAhead, nextManySQL
	}
	found := make([][]*store.Job, len(heads)) // up to 2*limit per head, sorted in line order
	var in jsonRows
	for _, h := range heads {
		in.row()
		in.int(h.kh).int(h.dueUS).int(h.id)
	}
	if err := w.readLines(q, in.String(), found); err != nil {
		return err
	}
	for i, h := range heads {
		jobs := found[i]
		if len(jobs) == 0 {
			continue // the line is empty: dropped by the caller
		}
		complete := len(jobs) < limit
		jobs = jobs[:min(len(jobs), limit)]
		next[asked[i]] = jobs[0]
		w.store.memo.fill(h.kh, jobs[0], jobs[1:], complete)
	}
	return nil
}

// readLines runs one of the next-in-line reads and sorts each line's rows
// into found, in line order.
func (w *lineWriter) readLines(q, in string, found [][]*store.Job) error {
	st, err := w.stmt(q)
	if err != nil {
		return err
	}
	rows, err := st.QueryContext(w.ctx, in)
	if err != nil {
		return err
	}
	for rows.Next() {
		var i int
		j, err := scanJob(prefixScanner{rows, []any{&i}}, w.now)
		if err != nil {
			rows.Close()
			return err
		}
		if i < 0 || i >= len(found) {
			rows.Close()
			return fmt.Errorf("next in line: index %d out of range", i)
		}
		found[i] = append(found[i], j)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return err
	}
	for _, jobs := range found {
		slices.SortFunc(jobs, func(a, b *store.Job) int {
			return cmpPlace(micros(a.DueAt), a.ID, micros(b.DueAt), b.ID)
		})
	}
	return nil
}

// placeArrivals gives each newcomer's key a line, or the head of its line
// when the newcomer is due before a head that has not run yet.
func (w *lineWriter) placeArrivals() error {
	memo := &w.store.memo
	khs := make([]int64, 0, len(w.arrivals))
	for kh := range w.arrivals {
		if _, running := w.claims.runningOn(kh); !running { // a running head keeps its place
			khs = append(khs, kh)
		} else {
			w.remember(kh, 0)
		}
	}
	if len(khs) == 0 {
		return nil
	}
	st, err := w.stmt(lineHeadsSQL)
	if err != nil {
		return err
	}
	rows, err := st.QueryContext(w.ctx, jsonInts(khs))
	if err != nil {
		return err
	}
	type head struct {
		id, dueUS             int64
		blocked, state, tries int
	}
	heads := make(map[int64]head, len(khs))
	for rows.Next() {
		var kh int64
		var h head
		if err := rows.Scan(&kh, &h.id, &h.blocked, &h.state, &h.dueUS, &h.tries); err != nil {
			rows.Close()
			return err
		}
		heads[kh] = h
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return err
	}
	var moves []any
	for _, kh := range khs {
		a := w.arrivals[kh]
		h, ok := heads[kh]
		if !ok {
			w.fresh = append(w.fresh, a)
			w.headed(a.id)
			// The key had no pending job: its line holds this cycle's
			// newcomers only, so the memo can know all of it.
			memo.start(kh, a.dueUS, a.id)
			w.remember(kh, a.id)
			continue
		}
		_, running := w.claims.get(h.id)
		movable := h.blocked == 0 && h.state == stScheduled && h.tries == 0 && !running
		if movable && (a.dueUS < h.dueUS || (a.dueUS == h.dueUS && a.id < h.id)) {
			moves = append(moves, kh, a.id, a.kind, a.runUS)
			w.headed(a.id)
			memo.forget(kh) // the old head rejoins the queue; not followed
			continue
		}
		w.remember(kh, 0)
	}
	return w.execRows(moveHeads, nil, moves, nil)
}

// prefixScanner scans leading columns into pre, the rest into the caller's
// destinations, so scanJob can read rows that carry extra columns first.
type prefixScanner struct {
	s   scanner
	pre []any
}

func (p prefixScanner) Scan(dest ...any) error {
	return p.s.Scan(append(slices.Clip(p.pre), dest...)...)
}

// handOffUpTo enables hand-offs within the cycle's claim, if it has one.
func (w *lineWriter) handOffUpTo(now time.Time, c *store.ClaimParams) {
	w.now = now
	if c == nil {
		return
	}
	w.offer = c
	w.total = c.Max
	w.left = make(map[string]int, len(c.Limits))
	for _, l := range c.Limits {
		w.left[l.Kind] = l.Max
	}
}

// handOff claims j, the next job of line kh, if it may run now, a slot of
// its kind is free, and no other job of that kind (a line's head or an
// unordered job) has waited longer, so a busy key cannot starve the others.
func (w *lineWriter) handOff(kh int64, j *store.Job) (bool, error) {
	if w.offer == nil || w.total <= 0 || w.left[j.Kind] <= 0 || j.RunAt.After(w.now) {
		return false, nil
	}
	oldest, err := w.oldestWaiting(j.Kind)
	if err != nil {
		return false, err
	}
	if oldest != 0 && oldest < micros(j.RunAt) {
		return false, nil
	}
	w.left[j.Kind]--
	w.total--
	markClaimed(j, w.now, w.offer.Owner)
	w.handed = append(w.handed, j)
	w.handKh = append(w.handKh, kh)
	return true, nil
}

// oldestWaiting is the run_at of the oldest job of kind that waits to be
// claimed — a ready line's head, or an unordered job not running here — read
// once per transaction and kind, before lines move. Unordered jobs count
// too: claims take them by age beside the heads, and a stream of hand-offs
// must not keep them waiting.
func (w *lineWriter) oldestWaiting(kind string) (int64, error) {
	if v, ok := w.waiting[kind]; ok {
		return v, nil
	}
	if w.unorderedRunning == nil {
		w.unorderedRunning = w.claims.running(nil)
	}
	lineRun, err := w.stmt(nextLineRunSQL)
	if err != nil {
		return 0, err
	}
	unorderedRun, err := w.stmt(nextUnorderedRunSQL)
	if err != nil {
		return 0, err
	}
	oldest, err := earliestWaiting(w.ctx, kind, w.unorderedRunning[kind], lineRun, unorderedRun)
	if err != nil {
		return 0, err
	}
	if w.waiting == nil {
		w.waiting = map[string]int64{}
	}
	w.waiting[kind] = oldest
	return oldest, nil
}

func markClaimed(j *store.Job, now time.Time, owner string) {
	j.State = store.StateRunning
	j.Attempt++
	j.StartedAt = fromMicros(micros(now))
	j.LeaseOwner = owner
}

// remember queues this transaction's newcomers to line kh in the memo, if
// it follows the line, except head (the id of a newcomer that became the
// head, or 0).
func (w *lineWriter) remember(kh, head int64) {
	jobs := w.arrived[kh]
	if !w.store.memo.tracked(kh) {
		return
	}
	if jobs == nil {
		// A newcomer the memo did not see (a retried job rejoining).
		w.store.memo.forget(kh)
		return
	}
	for _, j := range jobs {
		if j.ID != head {
			w.store.memo.add(kh, j)
		}
	}
}

func (w *lineWriter) headed(id int64) {
	if w.newHeads == nil {
		w.newHeads = map[int64]bool{}
	}
	w.newHeads[id] = true
}

func (w *lineWriter) insert(p store.ExchangeParams) ([]store.InsertResult, error) {
	if len(p.Inserts) == 0 {
		return nil, nil
	}
	now := p.Now
	nowUS := micros(now)
	results := make([]store.InsertResult, len(p.Inserts))
	jobs := make([]store.Job, len(p.Inserts)) // one allocation for the cycle's answers
	khs, order := insertOrder(p.Inserts)
	rows := &pendingRows{auto: w.store.rowidIsLastID, nowUS: nowUS, rows: make([]pendingRow, 0, len(p.Inserts))}
	for n := range p.Inserts {
		i := n
		if order != nil {
			i = order[n]
		}
		in := &p.Inserts[i]
		if in.IdempotencyKey != "" {
			// An earlier row of this batch may hold the same key.
			if err := w.insertRows(rows); err != nil {
				return nil, err
			}
			existing, err := w.idempotent(in.IdempotencyKey, p.IdempotencySince, now)
			if err != nil {
				return nil, err
			}
			if existing != nil {
				// Under exchangeMu neither claims nor the log change while
				// this runs: the view may be taken after the read.
				existing = w.store.show(existing, w.store.viewOf(existing.ID))
				results[i] = store.InsertResult{Job: existing, Existing: true}
				continue
			}
		}
		// A job joins its key's line when it becomes due (due_at), never
		// ahead of a job that is already due.
		dueUS, state := nowUS, stAvailable
		if in.RunAt.After(now) {
			dueUS, state = micros(in.RunAt), stScheduled
		}
		id := w.store.nextID()
		rows.rows = append(rows.rows, pendingRow{id: id, kh: khs[i], dueUS: dueUS, kind: in.Kind, key: in.Key,
			idem: in.IdempotencyKey, payload: in.Payload, state: state, maxAttempts: in.MaxAttempts})
		jobs[i] = store.Job{
			ID: id, Kind: in.Kind, Key: in.Key, Payload: in.Payload,
			State: stateNames[state], MaxAttempts: in.MaxAttempts,
			RunAt: fromMicros(dueUS), DueAt: fromMicros(dueUS),
			IdempotencyKey: in.IdempotencyKey, CreatedAt: fromMicros(nowUS),
		}
		results[i] = store.InsertResult{Job: &jobs[i]}
		if in.Key != "" {
			w.arrive(in.Key, khs[i], id, dueUS, dueUS, in.Kind, results[i].Job)
		}
	}
	if err := w.insertRows(rows); err != nil {
		return nil, err
	}
	if w.store.memo.budget > 0 {
		w.arrived = map[int64][]*store.Job{}
		for i, r := range results {
			if !r.Existing && r.Job.Key != "" {
				w.arrived[khs[i]] = append(w.arrived[khs[i]], r.Job)
			}
		}
	}
	if err := w.flush(); err != nil {
		return nil, err
	}
	w.arrived = nil
	for _, r := range results {
		if !r.Existing {
			r.Job.Head = r.Job.Key == "" || w.newHeads[r.Job.ID]
		}
	}
	return results, nil
}

// insertOrder returns each insert's line id and, for a large cycle, the
// order to write the inserts in (nil: as they came): grouped by line id,
// each key's jobs in arrival order. The line index is ordered by line id,
// so the rows of one key then go into one leaf page one after another, and
// the next key's leaf is next to it, instead of every row seeking a
// random leaf of an index much larger than the CPU's caches: a flood of
// batch enqueues over 1,000 keys made 8-19 % more jobs/s.
//
// Ids are handed out in write order. Table rows must be appended in id
// order to stay cheap (naming ids out of order lost the whole gain), so
// in a grouped cycle ids rise within each key, as line order needs, and
// across cycles, but not across the keys of one cycle. Small cycles (a
// single job, a short batch) keep arrival order, and a cycle with
// idempotency keys does too: which of two rows sharing an idempotency key
// is stored must not depend on their keys.
func insertOrder(ins []store.InsertParams) ([]int64, []int) {
	khs := make([]int64, len(ins))
	grouped := len(ins) >= groupInsertsFrom
	for i, in := range ins {
		khs[i] = lineID(in.Key)
		if in.IdempotencyKey != "" {
			grouped = false
		}
	}
	if !grouped {
		return khs, nil
	}
	order := make([]int, len(ins))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(khs[a], khs[b]) })
	return khs, order
}

// groupInsertsFrom is the smallest cycle insertOrder groups by key. The
// gain is a flood's (cycles of thousands of rows); below it the rows touch
// few leaves, and arrival order is the least surprising order for ids.
const groupInsertsFrom = 1000

// pendingRows are rows buffered for the multi-row insert.
type pendingRows struct {
	auto  bool  // leave ids to SQLite (Store.rowidIsLastID)
	nowUS int64 // created_at of every row
	rows  []pendingRow
}

// pendingRow is one job row; run_at is due_at.
type pendingRow struct {
	id, kh, dueUS      int64
	kind, key, idem    string
	payload            []byte
	state, maxAttempts int
}

// uniform reports whether the rows differ only in key and payload, as a
// batch enqueue's rows mostly do: the insert then binds the rest once.
func (r *pendingRows) uniform() bool {
	f := &r.rows[0]
	for i := range r.rows {
		x := &r.rows[i]
		if x.kind != f.kind || x.state != f.state || x.maxAttempts != f.maxAttempts || x.dueUS != f.dueUS || x.idem != "" {
			return false
		}
	}
	return true
}

// insertRows writes the buffered rows in as few statements as the
// prepared chunk sizes allow, and empties the buffer. When SQLite picks
// the ids, each statement's last rowid must be the id this store handed
// out: anything else fails the cycle rather than store a job under an id
// nobody was told.
func (w *lineWriter) insertRows(r *pendingRows) error {
	if len(r.rows) == 0 {
		return nil
	}
	defer func() { r.rows = r.rows[:0] }()
	var (
		m      *multiRow
		shared []any
		args   []any
	)
	// Boxing an int64 or a string for database/sql allocates, so values
	// that rows share are boxed once: a grouped cycle has each key's rows
	// side by side.
	var keyArg, khArg any
	lastKey := ""
	box := func(x *pendingRow) {
		if keyArg == nil || x.key != lastKey {
			keyArg, khArg, lastKey = x.key, x.kh, x.key
		}
	}
	if r.uniform() {
		m = insertUniform
		if r.auto {
			m = insertUniformAuto
		}
		f := &r.rows[0]
		shared = []any{f.kind, f.state, f.maxAttempts, f.dueUS, r.nowUS}
		args = make([]any, 0, len(r.rows)*m.cols)
		for i := range r.rows {
			x := &r.rows[i]
			if !r.auto {
				args = append(args, x.id)
			}
			box(x)
			args = append(args, keyArg, khArg, x.payload)
		}
	} else {
		m = insertJobs
		if r.auto {
			m = insertJobsAuto
		}
		nowArg := any(r.nowUS)
		var kindArg any
		lastKind := ""
		args = make([]any, 0, len(r.rows)*m.cols)
		for i := range r.rows {
			x := &r.rows[i]
			if !r.auto {
				args = append(args, x.id)
			}
			if kindArg == nil || x.kind != lastKind {
				kindArg, lastKind = x.kind, x.kind
			}
			box(x)
			dueArg := nowArg
			if x.dueUS != r.nowUS {
				dueArg = x.dueUS
			}
			var idem any
			if x.idem != "" {
				idem = x.idem
			}
			args = append(args, kindArg, keyArg, khArg, x.payload, x.state, x.maxAttempts, dueArg, dueArg, idem, nowArg)
		}
	}
	var check func(int, sql.Result) error
	if r.auto {
		check = func(last int, res sql.Result) error {
			got, err := res.LastInsertId()
			if err != nil {
				return err
			}
			if want := r.rows[last].id; got != want {
				return fmt.Errorf("%w: SQLite gave row id %d to job %d", errRowidDrift, got, want)
			}
			return nil
		}
	}
	return w.execRows(m, shared, args, check)
}

// errRowidDrift means the table's highest rowid was not the last id handed
// out, so SQLite's choice of id would not match the store's. The cycle
// fails and the next one names ids explicitly.
var errRowidDrift = errors.New("row ids out of step")

// idempotent returns the live job holding key, or nil. A job past the
// window gives its key up so a new job can take it.
func (w *lineWriter) idempotent(key string, since, now time.Time) (*store.Job, error) {
	j, err := scanJob(w.tx.QueryRowContext(w.ctx, selectJob+` WHERE j.idempotency_key = ?`, key), now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !j.CreatedAt.Before(since) {
		return j, nil
	}
	// The memo's copy of a queued job would keep the key.
	w.store.memo.forget(lineID(j.Key))
	_, err = w.tx.ExecContext(w.ctx, `UPDATE herald_jobs SET idempotency_key = NULL WHERE id = ?`, j.ID)
	return nil, err
}

// outputSQL records a handler's output; only jobs whose handler recorded
// one pay for it.
const outputSQL = `UPDATE herald_jobs SET output = ?2 WHERE id = ?1`

// finish writes outcomes of jobs this process claimed. It returns the ids
// whose claims end once the transaction commits.
func (w *lineWriter) finish(now time.Time, finishes []store.FinishParams) ([]store.FinishResult, []int64, error) {
	if len(finishes) == 0 {
		return nil, nil, nil
	}
	results := make([]store.FinishResult, len(finishes))
	done := make([]int64, 0, len(finishes))
	nowUS := micros(now)
	at := now.UTC().Format(time.RFC3339Nano)
	var completed []any // id, started_at of unordered jobs
	for i, f := range finishes {
		results[i].ID = f.ID
		c, ok := w.claims.get(f.ID)
		if !ok || c.owner != f.Owner || c.token != f.LeaseToken {
			results[i].Fenced = true // not ours (any more): write nothing
			continue
		}
		done = append(done, f.ID)
		if f.Output != nil {
			if err := w.exec(outputSQL, f.ID, []byte(f.Output)); err != nil {
				return nil, nil, err
			}
		}
		switch f.Outcome {
		case store.OutcomeCompleted:
			if c.kh == 0 {
				completed = append(completed, f.ID, c.startedUS)
				break
			}
			w.logged = append(w.logged, [3]int64{f.ID, int64(c.attempt), c.startedUS})
			w.headFinished(c.kh, c.dueUS, f.ID)
		case store.OutcomeRelease:
			// The attempt was never recorded, so only the line needs
			// writing: it may still point at a job finished before a
			// hand-off.
			if c.kh != 0 {
				if err := w.exec(moveHeadSQL, c.kh, f.ID, c.kind, c.runUS); err != nil {
					return nil, nil, err
				}
			}
		case store.OutcomeRetry:
			if err := w.exec(retrySQL, f.ID, c.startedUS, nowUS, micros(f.RetryAt), f.Error, at); err != nil {
				return nil, nil, err
			}
			if c.kh != 0 {
				if err := w.exec(moveHeadSQL, c.kh, f.ID, c.kind, micros(f.RetryAt)); err != nil {
					return nil, nil, err
				}
			}
		case store.OutcomeDiscard:
			if err := w.exec(discardSQL, f.ID, c.startedUS, nowUS, 0, f.Error, at); err != nil {
				return nil, nil, err
			}
			switch {
			case c.kh == 0:
			case f.BlockKey:
				if err := w.exec(blockSQL, c.kh, f.ID, c.kind, c.runUS); err != nil {
					return nil, nil, err
				}
			default:
				w.headFinished(c.kh, c.dueUS, f.ID)
			}
		default:
			return nil, nil, fmt.Errorf("job %d: unknown outcome %d", f.ID, f.Outcome)
		}
	}
	if len(completed) > 0 {
		if err := w.execRows(completeRows, []any{nowUS}, completed, nil); err != nil {
			return nil, nil, err
		}
	}
	return results, done, nil
}

// claimTx reads ready heads not already running here, oldest first. The
// claims are recorded in memory by the caller once the transaction commits.
func (w *lineWriter) claim(p store.ClaimParams, finished []int64) ([]*store.Job, error) {
	jobs := w.handed
	nowUS := micros(p.Now)
	left := w.total
	unordered := w.claims.running(finished)
	var marked []int64
	for _, l := range p.Limits {
		n := min(w.left[l.Kind], left)
		if n <= 0 {
			continue
		}
		ids := unordered[l.Kind]
		if ids == nil {
			ids = []int64{}
		}
		exclude, err := json.Marshal(ids)
		if err != nil {
			return nil, err
		}
		var found []*store.Job
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{claimLinesSQL, []any{l.Kind, nowUS}},
			{claimUnorderedSQL, []any{l.Kind, nowUS, string(exclude)}},
		} {
			st, err := w.stmt(q.sql)
			if err != nil {
				return nil, err
			}
			rows, err := st.QueryContext(w.ctx, q.args...)
			if err != nil {
				return nil, err
			}
			// The statements have no LIMIT: SQLite re-prepares a statement
			// whenever a bound LIMIT changes (~0.2 ms), and the slot count
			// changes every cycle. Rows stream in index order; stop at n.
			for got := 0; got < n && rows.Next(); got++ {
				j, err := scanJob(rows, p.Now)
				if err != nil {
					rows.Close()
					return nil, err
				}
				found = append(found, j)
			}
			if err := errors.Join(rows.Err(), rows.Close()); err != nil {
				return nil, err
			}
		}
		// Ordered and unordered heads compete by age.
		slices.SortFunc(found, func(a, b *store.Job) int {
			return cmp.Or(a.RunAt.Compare(b.RunAt), cmp.Compare(a.ID, b.ID))
		})
		found = found[:min(len(found), n)]
		for _, j := range found {
			markClaimed(j, p.Now, p.Owner)
			if kh := lineID(j.Key); kh != 0 {
				marked = append(marked, kh)
			}
		}
		jobs = append(jobs, found...)
		left -= len(found)
	}
	if len(marked) > 0 {
		b, err := json.Marshal(marked)
		if err != nil {
			return nil, err
		}
		if err := w.exec(markRunningSQL, string(b)); err != nil {
			return nil, err
		}
	}
	return jobs, nil
}
