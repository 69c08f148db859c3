// Package history checks recorded job-queue histories against herald's
// delivery guarantees.
//
// Tests, benchmarks and the crash harness record what the queue actually did
// — which jobs the producer saw acknowledged (Ack) and every delivery attempt
// a worker ran (Record) — usually through a Recorder, then call Check. The
// resulting Report says whether:
//
//   - every acknowledged job was delivered successfully at least once
//     (otherwise it is lost), unless it was expected to be dead-lettered;
//   - no job was delivered that was never acknowledged (unexpected), unless
//     its enqueue outcome was indeterminate;
//   - for each ordered key (Key != ""), attempts started in sequence order
//     (no order violations) and never ran concurrently (no overlaps). Together
//     these mean job n+1 of a key starts only after job n finished.
//
// Duplicates (a job succeeding more than once) are reported but are not an
// error: at-least-once delivery allows them for jobs in flight at a crash.
// A harness that knows when its faults happened passes them in
// Options.Faults; each duplicate is then either recovered (a fault hit
// while one of its successful attempts was in flight) or unexplained, and
// unexplained duplicates fail the check.
//
// Check sorts per key and sweeps, so it is O(n log k) for n records with at
// most k attempts per key; millions of records take a few seconds at most.
package history

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Outcome is how a delivery attempt ended.
type Outcome int

const (
	// Unknown means the end of the attempt was never observed, e.g. the
	// process crashed while the handler ran. It is the zero value so that a
	// started but unfinished Record never counts as a success.
	Unknown Outcome = iota
	// Succeeded means the handler completed the job.
	Succeeded
	// Failed means the handler returned an error; the job may be retried or
	// dead-lettered.
	Failed
)

// String returns "unknown", "succeeded" or "failed".
func (o Outcome) String() string {
	switch o {
	case Unknown:
		return "unknown"
	case Succeeded:
		return "succeeded"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Ack says the producer was told that job ID was stored durably.
type Ack struct {
	ID  int64
	Key string // "" means unordered
	Seq int64  // increases in the order the producer got acks for Key
}

// Record is one delivery attempt of a job as a worker observed it.
type Record struct {
	ID      int64
	Key     string
	Seq     int64
	Attempt int
	Start   time.Time
	// End is zero if the end was never observed (crash mid-run).
	End time.Time
	// CrashedAt, when End is zero, is when the process running the attempt
	// died, so the attempt occupied its key during [Start, CrashedAt). With
	// both End and CrashedAt zero the attempt's extent is unknown: it is left
	// out of overlap checks and counted in Report.Unfinished.
	CrashedAt time.Time
	// Outcome decides delivery; End and CrashedAt only decide timing.
	Outcome Outcome
}

// end returns the exclusive end of the interval during which the attempt
// held its key, and false if that is unknown.
func (r *Record) end() (time.Time, bool) {
	if !r.End.IsZero() {
		return r.End, true
	}
	if !r.CrashedAt.IsZero() {
		return r.CrashedAt, true
	}
	return time.Time{}, false
}

// DefaultMaxListed is the number of ids or violations listed per category
// when Options.MaxListed is 0.
const DefaultMaxListed = 20

// Options tunes Check. The zero value is the strict default.
type Options struct {
	// ExpectDeadLettered holds acknowledged ids that are meant to end up
	// dead-lettered (e.g. a poison key). Such an id without a success is
	// counted as DeadLettered instead of Lost, provided at least one of its
	// attempts Failed; with no failed attempt it is still Lost.
	ExpectDeadLettered map[int64]bool
	// ConfirmedDead holds ids the system under test itself reports as
	// dead-lettered once the run is over. An id both expected and
	// confirmed dead counts as DeadLettered even with no Failed attempt
	// recorded: every attempt can fail before it reaches the recorder
	// (a webhook receiver that is down refuses the connection).
	ConfirmedDead map[int64]bool
	// Indeterminate holds ids whose enqueue request was sent but whose answer
	// was never received. If such an id was not acknowledged, delivering it
	// or not is equally fine. An acknowledged id is checked normally.
	Indeterminate map[int64]bool
	// MaxListed caps how many ids (smallest first) and violations (earliest
	// first) each category of the Report lists; counts are always exact.
	// 0 means DefaultMaxListed, negative means no cap.
	MaxListed int
	// Faults, when not nil, are the windows during which the harness
	// injected faults (a kill -9 is a window of one instant; a SIGSTOP lasts
	// until SIGCONT). A duplicate is then recovered if some successful
	// attempt of it, other than its last one, started no later than a
	// fault window ended and was followed by another attempt of the job
	// starting no earlier than the window began: the queue could not have
	// learned of that success. Every other duplicate is unexplained and
	// fails the check. Nil keeps duplicates informational.
	Faults []Fault
	// QueueFailed holds attempts the queue itself recorded as failed
	// although the recorder saw them succeed: the receiver applied the
	// work, but its answer reached the queue too late (after the queue's
	// timeout for the attempt) or not at all. A later attempt of such a job
	// is a duplicate the queue had to make, so it counts as recovered
	// without a fault window.
	QueueFailed map[AttemptRef]bool
}

// AttemptRef names one attempt of one job.
type AttemptRef struct {
	ID      int64
	Attempt int
}

// Fault is a window [From, To] during which a fault (crash, stall, restart)
// was in effect. To may equal From for an instantaneous fault.
type Fault struct {
	From, To time.Time
}

// OrderViolation is an attempt that started after an attempt of a higher
// seq of the same key had already started.
type OrderViolation struct {
	Key     string
	Earlier Record // started first, higher Seq
	Later   Record // started afterwards, lower Seq
}

func (v OrderViolation) String() string {
	return fmt.Sprintf("key %q: seq %d (id %d attempt %d) started at %s after seq %d (id %d attempt %d) started at %s",
		v.Key, v.Later.Seq, v.Later.ID, v.Later.Attempt, fmtTime(v.Later.Start),
		v.Earlier.Seq, v.Earlier.ID, v.Earlier.Attempt, fmtTime(v.Earlier.Start))
}

// Overlap is an attempt that started while an earlier-started attempt of the
// same key was still running.
type Overlap struct {
	Key     string
	Earlier Record // still running when Later started
	Later   Record
}

func (o Overlap) String() string {
	end, _ := o.Earlier.end()
	return fmt.Sprintf("key %q: seq %d (id %d attempt %d) started at %s while seq %d (id %d attempt %d) ran [%s, %s)",
		o.Key, o.Later.Seq, o.Later.ID, o.Later.Attempt, fmtTime(o.Later.Start),
		o.Earlier.Seq, o.Earlier.ID, o.Earlier.Attempt, fmtTime(o.Earlier.Start), fmtTime(end))
}

func fmtTime(t time.Time) string { return t.Format(time.RFC3339Nano) }

// Report is the outcome of Check. Counts are exact; the id and violation
// lists are capped by Options.MaxListed.
type Report struct {
	Acknowledged int // distinct acknowledged ids
	Delivered    int // distinct ids with at least one Succeeded attempt
	Attempts     int // records checked

	Lost       int // acknowledged, never succeeded, not dead-lettered
	Unexpected int // distinct ids delivered but never acknowledged nor indeterminate
	Duplicates int // distinct ids that succeeded more than once (not an error)
	// RecoveredDuplicates and UnexplainedDuplicates split Duplicates when
	// Options.Faults is set (both are 0 otherwise): only unexplained ones
	// are an error.
	RecoveredDuplicates   int
	UnexplainedDuplicates int
	DeadLettered          int // expected dead-lettered ids that failed and never succeeded
	Unfinished            int // records with neither End nor CrashedAt
	// Mismatched counts distinct acknowledged ids whose records, or repeated
	// acks, disagree with the first ack about Key or Seq: the order checks
	// would then be judging the wrong job, so it is an error.
	Mismatched int

	LostIDs       []int64 // smallest first
	UnexpectedIDs []int64
	DuplicateIDs  []int64
	MismatchedIDs []int64
	// UnexplainedDuplicateIDs lists duplicates no fault window explains.
	UnexplainedDuplicateIDs []int64

	NumOrderViolations int              // attempts that started after a higher seq of their key
	NumOverlaps        int              // attempts that started while another of their key ran
	OrderViolations    []OrderViolation // earliest Later.Start first
	Overlaps           []Overlap        // earliest Later.Start first
}

// OK reports whether the guarantees held: nothing lost, unexpected or
// mismatched, and no order violations or overlaps. Duplicates are allowed.
func (r Report) OK() bool {
	return r.Lost == 0 && r.Unexpected == 0 && r.Mismatched == 0 &&
		r.UnexplainedDuplicates == 0 && r.NumOrderViolations == 0 && r.NumOverlaps == 0
}

// Err returns nil if r.OK(), otherwise an error naming each failed check
// with its count and the first listed ids or violation.
func (r Report) Err() error {
	if r.OK() {
		return nil
	}
	var parts []string
	ids := func(n int, what string, ids []int64) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s (ids %s)", n, what, fmtIDs(n, ids)))
		}
	}
	ids(r.Lost, "lost", r.LostIDs)
	ids(r.Unexpected, "unexpected", r.UnexpectedIDs)
	ids(r.Mismatched, "mismatched", r.MismatchedIDs)
	ids(r.UnexplainedDuplicates, "unexplained duplicates", r.UnexplainedDuplicateIDs)
	if r.NumOrderViolations > 0 {
		s := fmt.Sprintf("%d order violations", r.NumOrderViolations)
		if len(r.OrderViolations) > 0 {
			s += " (first: " + r.OrderViolations[0].String() + ")"
		}
		parts = append(parts, s)
	}
	if r.NumOverlaps > 0 {
		s := fmt.Sprintf("%d overlaps", r.NumOverlaps)
		if len(r.Overlaps) > 0 {
			s += " (first: " + r.Overlaps[0].String() + ")"
		}
		parts = append(parts, s)
	}
	return errors.New("history: " + strings.Join(parts, "; ") + " [" + r.String() + "]")
}

func fmtIDs(n int, ids []int64) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, id)
	}
	if n > len(ids) {
		fmt.Fprintf(&b, " ...%d more", n-len(ids))
	}
	return b.String()
}

// String is a one-line summary of all counts.
func (r Report) String() string {
	s := fmt.Sprintf("acknowledged=%d delivered=%d attempts=%d lost=%d unexpected=%d duplicates=%d dead-lettered=%d unfinished=%d mismatched=%d order-violations=%d overlaps=%d",
		r.Acknowledged, r.Delivered, r.Attempts, r.Lost, r.Unexpected, r.Duplicates,
		r.DeadLettered, r.Unfinished, r.Mismatched, r.NumOrderViolations, r.NumOverlaps)
	if r.RecoveredDuplicates > 0 || r.UnexplainedDuplicates > 0 {
		s += fmt.Sprintf(" (duplicates: recovered=%d unexplained=%d)", r.RecoveredDuplicates, r.UnexplainedDuplicates)
	}
	return s
}

// idState accumulates what the records say about one id.
type idState struct {
	succeeded  int32
	failed     bool
	mismatched bool
	primary    bool // first ack of this id; later acks of it are ignored
}

// pair is an (earlier, later) pair of record indexes.
type pair struct{ earlier, later int }

// Check judges recs against acks. It does not modify its arguments, and the
// order of acks and recs does not matter.
func Check(acks []Ack, recs []Record, opts Options) Report {
	limit := opts.MaxListed
	if limit == 0 {
		limit = DefaultMaxListed
	}
	rep := Report{Attempts: len(recs)}

	// Per-id bookkeeping: a slice parallel to acks for acknowledged ids (the
	// common case, so no per-id allocation) and a sorted list for the rest.
	idx := newAckIndex(acks)
	states := make([]idState, len(acks))
	for i := range acks {
		j, _ := idx.get(acks[i].ID)
		if j == i {
			states[i].primary = true
		} else if acks[j].Key != acks[i].Key || acks[j].Seq != acks[i].Seq {
			states[j].mismatched = true
		}
	}
	type idOutcome struct {
		id int64
		o  Outcome
	}
	var unacked []idOutcome
	for i := range recs {
		r := &recs[i]
		if r.End.IsZero() && r.CrashedAt.IsZero() {
			rep.Unfinished++
		}
		j, ok := idx.get(r.ID)
		if !ok {
			unacked = append(unacked, idOutcome{r.ID, r.Outcome})
			continue
		}
		st := &states[j]
		if acks[j].Key != r.Key || acks[j].Seq != r.Seq {
			st.mismatched = true
		}
		st.add(r.Outcome)
	}

	var lost, unexpected, dups, mismatched []int64
	for i := range acks {
		st := &states[i]
		if !st.primary {
			continue
		}
		id := acks[i].ID
		rep.Acknowledged++
		if st.mismatched {
			mismatched = append(mismatched, id)
		}
		switch {
		case st.succeeded > 0:
			rep.Delivered++
			if st.succeeded > 1 {
				dups = append(dups, id)
			}
		case opts.ExpectDeadLettered[id] && (st.failed || opts.ConfirmedDead[id]):
			rep.DeadLettered++
		default:
			lost = append(lost, id)
		}
	}
	// Sorting groups the unacknowledged records by id; cheaper and more
	// cache-friendly than a map when a broken run delivers millions of them.
	slices.SortFunc(unacked, func(a, b idOutcome) int { return cmp.Compare(a.id, b.id) })
	for i := 0; i < len(unacked); {
		id := unacked[i].id
		var st idState
		for ; i < len(unacked) && unacked[i].id == id; i++ {
			st.add(unacked[i].o)
		}
		if st.succeeded > 0 {
			rep.Delivered++
			if st.succeeded > 1 {
				dups = append(dups, id)
			}
		}
		if !opts.Indeterminate[id] {
			unexpected = append(unexpected, id)
		}
	}
	rep.Lost, rep.LostIDs = len(lost), firstIDs(lost, limit)
	rep.Unexpected, rep.UnexpectedIDs = len(unexpected), firstIDs(unexpected, limit)
	if opts.Faults != nil && len(dups) > 0 {
		var unexplained []int64
		rep.RecoveredDuplicates, unexplained = explainDuplicates(recs, dups, opts.Faults, opts.QueueFailed)
		rep.UnexplainedDuplicates, rep.UnexplainedDuplicateIDs = len(unexplained), firstIDs(unexplained, limit)
	}
	rep.Duplicates, rep.DuplicateIDs = len(dups), firstIDs(dups, limit)
	rep.Mismatched, rep.MismatchedIDs = len(mismatched), firstIDs(mismatched, limit)

	order, overlaps := checkKeys(recs)
	rep.NumOrderViolations = len(order)
	rep.NumOverlaps = len(overlaps)
	for _, p := range firstPairs(recs, order, limit) {
		rep.OrderViolations = append(rep.OrderViolations,
			OrderViolation{Key: recs[p.later].Key, Earlier: recs[p.earlier], Later: recs[p.later]})
	}
	for _, p := range firstPairs(recs, overlaps, limit) {
		rep.Overlaps = append(rep.Overlaps,
			Overlap{Key: recs[p.later].Key, Earlier: recs[p.earlier], Later: recs[p.later]})
	}
	return rep
}

// explainDuplicates splits the duplicate ids into those a fault window
// explains (see Options.Faults) and the rest.
func explainDuplicates(recs []Record, dups []int64, faults []Fault, queueFailed map[AttemptRef]bool) (recovered int, unexplained []int64) {
	want := make(map[int64][]int, len(dups))
	for _, id := range dups {
		want[id] = nil
	}
	for i := range recs {
		if _, ok := want[recs[i].ID]; ok {
			want[recs[i].ID] = append(want[recs[i].ID], i)
		}
	}
	for _, id := range dups {
		idx := want[id]
		slices.SortFunc(idx, func(a, b int) int { return cmpStart(&recs[a], &recs[b]) })
		if duplicateExplained(recs, idx, faults, queueFailed) {
			recovered++
		} else {
			unexplained = append(unexplained, id)
		}
	}
	return recovered, unexplained
}

// duplicateExplained reports whether some successful attempt of one job
// (idx in start order) was followed by another attempt across a fault that
// hit while the success was in flight, or was one the queue recorded as
// failed.
func duplicateExplained(recs []Record, idx []int, faults []Fault, queueFailed map[AttemptRef]bool) bool {
	for n, i := range idx[:len(idx)-1] {
		if recs[i].Outcome != Succeeded {
			continue
		}
		if queueFailed[AttemptRef{recs[i].ID, recs[i].Attempt}] {
			return true
		}
		next := recs[idx[n+1]].Start
		for _, f := range faults {
			if !recs[i].Start.After(f.To) && !next.Before(f.From) {
				return true
			}
		}
	}
	return false
}

func (st *idState) add(o Outcome) {
	switch o {
	case Succeeded:
		st.succeeded++
	case Failed:
		st.failed = true
	}
}

// checkKeys returns the order violations and overlaps among the attempts of
// each ordered key.
func checkKeys(recs []Record) (order, overlaps []pair) {
	// Group record indexes by key with a counting sort: one map lookup per
	// record instead of an O(n log n) sort on string keys.
	keyIdx := make(map[string]int)
	keyOf := make([]int, len(recs))
	var counts []int
	for i := range recs {
		key := recs[i].Key
		if key == "" {
			keyOf[i] = -1
			continue
		}
		k, ok := keyIdx[key]
		if !ok {
			k = len(counts)
			keyIdx[key] = k
			counts = append(counts, 0)
		}
		keyOf[i] = k
		counts[k]++
	}
	offs := make([]int, len(counts)+1)
	for k, c := range counts {
		offs[k+1] = offs[k] + c
	}
	next := slices.Clone(offs[:len(counts)])
	byKey := make([]int, offs[len(counts)])
	for i, k := range keyOf {
		if k >= 0 {
			byKey[next[k]] = i
			next[k]++
		}
	}

	for k := range counts {
		grp := byKey[offs[k]:offs[k+1]]
		if len(grp) < 2 {
			continue
		}
		// Ties on Start are broken by Seq so that attempts starting at the
		// same instant are not an order violation (they do overlap, unless
		// one of them is empty).
		slices.SortFunc(grp, func(a, b int) int { return cmpStart(&recs[a], &recs[b]) })

		// Order: no attempt may start after one of a higher seq started.
		hi := grp[0]
		for _, i := range grp[1:] {
			switch {
			case recs[i].Seq < recs[hi].Seq:
				order = append(order, pair{hi, i})
			case recs[i].Seq > recs[hi].Seq:
				hi = i
			}
		}

		// Overlap: in start order, an attempt overlaps an earlier one iff it
		// starts before the latest end seen so far (ends are exclusive).
		run := -1
		var runEnd time.Time
		for _, i := range grp {
			end, ok := recs[i].end()
			if !ok {
				continue
			}
			if run >= 0 && recs[i].Start.Before(runEnd) {
				overlaps = append(overlaps, pair{run, i})
			}
			if run < 0 || end.After(runEnd) {
				run, runEnd = i, end
			}
		}
	}
	return order, overlaps
}

func cmpStart(a, b *Record) int {
	if c := a.Start.Compare(b.Start); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Seq, b.Seq); c != 0 {
		return c
	}
	if c := cmp.Compare(a.ID, b.ID); c != 0 {
		return c
	}
	return cmp.Compare(a.Attempt, b.Attempt)
}

// firstIDs sorts ids and returns at most limit of them (all if limit < 0).
func firstIDs(ids []int64, limit int) []int64 {
	slices.Sort(ids)
	if limit >= 0 && len(ids) > limit {
		// Copy so the report does not pin a possibly huge backing array.
		return slices.Clone(ids[:limit])
	}
	return ids
}

// firstPairs returns at most limit pairs (all if limit < 0), earliest later
// start first, so the likely root cause of a cascade is listed.
func firstPairs(recs []Record, ps []pair, limit int) []pair {
	less := func(a, b pair) int {
		ra, rb := &recs[a.later], &recs[b.later]
		if c := ra.Start.Compare(rb.Start); c != 0 {
			return c
		}
		if c := strings.Compare(ra.Key, rb.Key); c != 0 {
			return c
		}
		return cmpStart(ra, rb)
	}
	if limit < 0 || len(ps) <= limit {
		slices.SortFunc(ps, less)
		return ps
	}
	// Keep the limit smallest in a sorted slice instead of sorting millions
	// of violations to list twenty.
	top := make([]pair, 0, limit+1)
	for _, p := range ps {
		if len(top) == limit && less(p, top[limit-1]) >= 0 {
			continue
		}
		i, _ := slices.BinarySearchFunc(top, p, less)
		top = slices.Insert(top, i, p)
		if len(top) > limit {
			top = top[:limit]
		}
	}
	return top
}

// ackIndex maps an acknowledged id to the index of its first ack. Harness
// ids are usually dense, so a slice indexed by id replaces the map (the
// dominant cost of Check at millions of ids) when the id range allows.
type ackIndex struct {
	min   int64
	dense []int32 // dense[id-min] is the ack index + 1; 0 means not acked
	m     map[int64]int
}

func newAckIndex(acks []Ack) *ackIndex {
	x := &ackIndex{}
	if len(acks) == 0 {
		return x
	}
	lo, hi := acks[0].ID, acks[0].ID
	for _, a := range acks {
		lo, hi = min(lo, a.ID), max(hi, a.ID)
	}
	// Unsigned so that a huge range does not overflow into a small one.
	span := uint64(hi) - uint64(lo) //nolint:gosec // the two's-complement difference is the point
	if len(acks) < math.MaxInt32 && span < 4*uint64(len(acks))+1024 {
		x.min = lo
		x.dense = make([]int32, span+1)
		for i, ack := range slices.Backward(acks) { // backwards: first ack wins
			x.dense[ack.ID-lo] = int32(i + 1) //nolint:gosec // len(acks) < MaxInt32 checked above
		}
		return x
	}
	x.m = make(map[int64]int, len(acks))
	for i, ack := range slices.Backward(acks) {
		x.m[ack.ID] = i
	}
	return x
}

func (x *ackIndex) get(id int64) (int, bool) {
	if x.m != nil {
		i, ok := x.m[id]
		return i, ok
	}
	if d := uint64(id) - uint64(x.min); d < uint64(len(x.dense)) { //nolint:gosec // wraps for ids below min, then fails the bound
		if i := x.dense[d]; i > 0 {
			return int(i - 1), true
		}
	}
	return 0, false
}
