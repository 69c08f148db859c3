package sqlite

import (
	"cmp"
	"slices"

	"github.com/heraldmq/herald/store"
)

// lineMemo remembers, per line, the jobs queued behind the line's
// effective head (the job running on it, else the head its row names), so
// that advancing the line needs no query: finding and reading the next job
// was about a third of the store loop's work under load.
//
// A line is remembered completely or in part:
//   - complete: a line this process created (the key had no pending job)
//     holds only the jobs it inserts from then on, and they join the memo
//     as they are inserted;
//   - in part: when a line's next job is read from the database, the jobs
//     after it are read too (up to readAhead of them) and remembered as a
//     prefix of the line. Newcomers join the part not remembered, so they
//     are not added; once the prefix is used up the line is read again.
//     A read that finds fewer than readAhead jobs knows the whole line.
//
// It can know a line because one process owns the database. Every change
// to a line goes through the lineWriter; anything the memo does not follow
// precisely (an operator's Retry or Cancel in the middle of a line, a
// scheduled head giving its place to a newcomer) forgets the line, and a
// forgotten line is read from the database as before. A failed transaction
// forgets everything, since the memo may hold its uncommitted changes.
// Memory is bounded by a byte budget, not by the backlog: past it, lines
// are forgotten or not remembered.
//
// All methods run under the store's exchangeMu.
type lineMemo struct {
	lines  map[int64]*memoLine
	bytes  int64
	budget int64 // 0 disables the memo
}

type memoLine struct {
	jobs            []*memoJob // queued behind the head, in line order (due, id); jobs[off:] are live
	off             int
	complete        bool // jobs[off:] is all of the line behind the head, not a prefix
	bytes           int64
	headDue, headID int64 // the effective head's place in the line
}

// memoJob is a queued job as the memo keeps it: a job that never ran, so
// its attempts, errors, output and start are empty. About a third of a
// store.Job's size.
type memoJob struct {
	id, runUS, dueUS, createdUS int64
	kind, key, idem             string
	payload                     []byte
	maxAttempts                 int
}

// compact makes j, which has just been inserted or read, a memoJob, not
// sharing its payload. ok is false for a job that ran before (a retried
// job rejoining its line): the memo does not keep those.
func compact(j *store.Job) (*memoJob, bool) {
	if j.Attempt != 0 || len(j.Errors) > 0 || j.Output != nil || !j.StartedAt.IsZero() || !j.FinishedAt.IsZero() {
		return nil, false
	}
	return &memoJob{id: j.ID, runUS: micros(j.RunAt), dueUS: micros(j.DueAt), createdUS: micros(j.CreatedAt),
		kind: j.Kind, key: j.Key, idem: j.IdempotencyKey, payload: slices.Clone(j.Payload), maxAttempts: j.MaxAttempts}, true
}

// job is m as a store.Job at the head of its line, as the database would
// give it at now.
func (m *memoJob) job(nowUS int64) *store.Job {
	state := store.StateAvailable
	if m.runUS > nowUS {
		state = store.StateScheduled
	}
	return &store.Job{ID: m.id, Kind: m.kind, Key: m.key, Payload: m.payload, State: state,
		MaxAttempts: m.maxAttempts, RunAt: fromMicros(m.runUS), DueAt: fromMicros(m.dueUS),
		IdempotencyKey: m.idem, CreatedAt: fromMicros(m.createdUS), Head: true}
}

// readAhead is how many jobs of a line one read fetches: the next job and
// the ones the memo keeps behind it.
const (
	readAhead    = 32
	readAheadSQL = "32"
	// lineCap is the most jobs remembered per line: a long line is known
	// by its first jobs, leaving the budget to other lines.
	lineCap = 256
)

// roomFor reports whether the budget has room for n more jobs of about
// avg bytes each, so that reading ahead is worth it.
func (m *lineMemo) roomFor(n int, avg int64) bool {
	return m.budget > 0 && m.bytes+int64(n)*avg <= m.budget
}

// lineOverhead approximates a remembered line's own memory.
const lineOverhead = 128

func (m *lineMemo) init(budget int64) {
	m.lines = map[int64]*memoLine{}
	m.bytes = 0
	m.budget = budget
}

// reset forgets every line.
func (m *lineMemo) reset() {
	if len(m.lines) > 0 {
		clear(m.lines)
	}
	m.bytes = 0
}

// start begins remembering line kh, just created with the given head and
// no other job. It does nothing when the budget is spent.
func (m *lineMemo) start(kh, headDue, headID int64) {
	if m.budget <= 0 || m.bytes+lineOverhead > m.budget {
		return
	}
	m.forget(kh)
	m.lines[kh] = &memoLine{bytes: lineOverhead, headDue: headDue, headID: headID, complete: true}
	m.bytes += lineOverhead
}

// fill remembers what a read found behind head, the new effective head of
// line kh: rest, in line order, is the whole line behind it if complete,
// else its first jobs. It keeps what fits in the budget, up to the first
// job the memo does not keep.
func (m *lineMemo) fill(kh int64, head *store.Job, rest []*store.Job, complete bool) {
	m.forget(kh)
	if m.budget <= 0 {
		return
	}
	l := &memoLine{bytes: lineOverhead, headDue: micros(head.DueAt), headID: head.ID, complete: complete}
	for _, j := range rest {
		c, ok := compact(j)
		if !ok || m.bytes+l.bytes+c.size() > m.budget || len(l.jobs) == lineCap {
			l.complete = false
			break
		}
		l.jobs = append(l.jobs, c)
		l.bytes += c.size()
	}
	if len(l.jobs) == 0 && !l.complete {
		return // nothing worth remembering
	}
	m.lines[kh] = l
	m.bytes += l.bytes
}

// forget stops remembering line kh.
func (m *lineMemo) forget(kh int64) {
	if l, ok := m.lines[kh]; ok {
		m.bytes -= l.bytes
		delete(m.lines, kh)
	}
}

// tracked reports whether line kh is remembered.
func (m *lineMemo) tracked(kh int64) bool {
	_, ok := m.lines[kh]
	return ok
}

// add queues j, just inserted, on its remembered line. A job that would
// stand before the head (only a scheduled head giving way does that, and
// the caller forgets such lines) forgets the line; past the budget or the
// line cap, the line is remembered in part from then on.
func (m *lineMemo) add(kh int64, j *store.Job) {
	l, ok := m.lines[kh]
	if !ok || !l.complete {
		return // a newcomer joins the part of the line not remembered
	}
	due := micros(j.DueAt)
	if cmpPlace(due, j.ID, l.headDue, l.headID) <= 0 {
		m.forget(kh)
		return
	}
	live := l.jobs[l.off:]
	// Newcomers are due now, so they nearly always go last.
	i := len(live)
	for i > 0 && cmpPlace(live[i-1].dueUS, live[i-1].id, due, j.ID) > 0 {
		i--
	}
	c, ok := compact(j)
	if !ok || len(live) >= lineCap || m.bytes+c.size() > m.budget {
		// Keep what is remembered as the line's first jobs; the rest is
		// read when they are used up. That only works for a newcomer
		// that goes last.
		if i < len(live) {
			m.forget(kh)
			return
		}
		l.complete = false
		return
	}
	l.jobs = slices.Insert(l.jobs, l.off+i, c)
	l.bytes += c.size()
	m.bytes += c.size()
}

// pop returns the job after line kh's head, which has just finished, as
// the database would give it at now, and makes it the head. ok is false
// when the memo does not know the next job (the caller reads it); next is
// nil when the line has no job left (the caller drops the line).
func (m *lineMemo) pop(kh, finishedDue, finishedID, nowUS int64) (next *store.Job, ok bool) {
	l, ok := m.lines[kh]
	if !ok {
		return nil, false
	}
	if l.headDue != finishedDue || l.headID != finishedID {
		// Not the head the memo knows: read the line instead.
		m.forget(kh)
		return nil, false
	}
	if l.off == len(l.jobs) {
		m.forget(kh)
		return nil, l.complete
	}
	c := l.jobs[l.off]
	l.jobs[l.off] = nil
	l.off++
	if l.off == len(l.jobs) {
		l.jobs, l.off = l.jobs[:0], 0
	} else if l.off > 64 && l.off*2 > len(l.jobs) {
		l.jobs = append(l.jobs[:0], l.jobs[l.off:]...)
		l.off = 0
	}
	l.bytes -= c.size()
	m.bytes -= c.size()
	l.headDue, l.headID = c.dueUS, c.id
	return c.job(nowUS), true
}

// queued returns the ids remembered behind line kh's head (for tests).
func (m *lineMemo) queued(kh int64) ([]int64, bool) {
	l, ok := m.lines[kh]
	if !ok {
		return nil, false
	}
	ids := make([]int64, 0, len(l.jobs)-l.off)
	for _, j := range l.jobs[l.off:] {
		ids = append(ids, j.id)
	}
	return ids, true
}

func cmpPlace(dueA, idA, dueB, idB int64) int {
	return cmp.Or(cmp.Compare(dueA, dueB), cmp.Compare(idA, idB))
}

// size approximates the memory m takes.
func (m *memoJob) size() int64 {
	return int64(128 + len(m.payload) + len(m.key) + len(m.kind) + len(m.idem))
}
