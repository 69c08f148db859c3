package sqlite

import (
	"sync"
	"time"

	"github.com/heraldmq/herald/store"
)

// Claims live in memory, not in the database. One process owns the file (the
// lock in Open), so "running here" is process state: after a crash nothing
// is running, which is exactly what rescue would conclude, and a claim costs
// no write. That is about a third of the per-job work on the hot path.
//
// The database keeps a running job in its pending state with the attempts
// it has finished; readers see it through overlay as running.

type claim struct {
	key, kind, owner string
	kh               int64 // line id, 0 for unordered
	untilUS          int64
	startedUS        int64
	dueUS            int64       // the job's place in its line
	runUS            int64       // when it became runnable, to rewrite its line on release
	attempt          int         // the running attempt's number
	token            int64       // fencing token handed to the claimer
	was              store.State // state before the claim, for Stats
}

type claimTable struct {
	mu     sync.Mutex
	byID   map[int64]*claim
	byKind map[string]map[int64]struct{}
	byLine map[int64]int64 // line id -> the job running on it
	// lastToken numbers claims. Tokens need only be unique while this
	// process owns the file: claims do not outlive it.
	lastToken int64
}

func (t *claimTable) init() {
	t.byID = map[int64]*claim{}
	t.byKind = map[string]map[int64]struct{}{}
	t.byLine = map[int64]int64{}
}

// runningOn returns the job running on line kh, if any.
func (t *claimTable) runningOn(kh int64) (int64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id, ok := t.byLine[kh]
	return id, ok
}

func (t *claimTable) get(id int64) (claim, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.byID[id]
	if !ok {
		return claim{}, false
	}
	return *c, true
}

// add records claimed jobs. jobs carry their pre-claim state in was.
func (t *claimTable) add(jobs []*store.Job, owner string, until time.Time) {
	if len(jobs) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, j := range jobs {
		t.lastToken++
		j.LeaseToken = t.lastToken
		t.byID[j.ID] = &claim{
			key: j.Key, kh: lineID(j.Key), kind: j.Kind, owner: owner, untilUS: micros(until),
			startedUS: micros(j.StartedAt), dueUS: micros(j.DueAt), runUS: micros(j.RunAt), attempt: j.Attempt, token: j.LeaseToken, was: wasState(j),
		}
		if kh := lineID(j.Key); kh != 0 {
			t.byLine[kh] = j.ID
		}
		ids := t.byKind[j.Kind]
		if ids == nil {
			ids = map[int64]struct{}{}
			t.byKind[j.Kind] = ids
		}
		ids[j.ID] = struct{}{}
	}
}

// wasState is the state a running job shows in the database.
func wasState(j *store.Job) store.State {
	if len(j.Errors) > 0 {
		return store.StateRetryable
	}
	return store.StateAvailable
}

func (t *claimTable) release(ids []int64) {
	if len(ids) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if c, ok := t.byID[id]; ok {
			delete(t.byKind[c.kind], id)
			delete(t.byID, id)
			if t.byLine[c.kh] == id {
				delete(t.byLine, c.kh)
			}
		}
	}
}

// running returns, per kind, the ids of unordered jobs running here,
// leaving out the finished ids (whose outcomes the current transaction
// writes). Running lines need no such list: they are marked in their row.
func (t *claimTable) running(finished []int64) map[string][]int64 {
	skip := make(map[int64]bool, len(finished))
	for _, id := range finished {
		skip[id] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	unordered := map[string][]int64{}
	for id, c := range t.byID {
		if c.kh == 0 && !skip[id] {
			unordered[c.kind] = append(unordered[c.kind], id)
		}
	}
	return unordered
}

func (t *claimTable) renew(owner string, until time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.byID {
		if c.owner == owner {
			c.untilUS = micros(until)
		}
	}
}

// expired returns the claims whose lease ended before us, without removing
// them: the caller removes them after recording the interruption.
func (t *claimTable) expired(us int64) map[int64]claim {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[int64]claim{}
	for id, c := range t.byID {
		if c.untilUS < us {
			out[id] = *c
		}
	}
	return out
}

// overlayWith shows a job this process runs as running (running tells
// whether c, looked up before the row was read, is a claim), and corrects
// the head flag of a finished job that a line row still names after a
// hand-off.
func (t *claimTable) overlayWith(j *store.Job, c claim, running bool) *store.Job {
	if !running {
		if j.Head && j.Key != "" {
			if on, ok := t.runningOn(lineID(j.Key)); ok && on != j.ID {
				j.Head = false
			}
		}
		return j
	}
	j.Head = true
	j.State = store.StateRunning
	j.Attempt = c.attempt
	j.StartedAt = fromMicros(c.startedUS)
	j.LeaseOwner = c.owner
	j.LeaseToken = c.token
	return j
}

// snapshot copies the claims, for a reader of many rows.
func (t *claimTable) snapshot() map[int64]claim {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int64]claim, len(t.byID))
	for id, c := range t.byID {
		out[id] = *c
	}
	return out
}

// countRunning moves running jobs from their stored state to running.
func (t *claimTable) countRunning(st *store.Stats) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.byID {
		m := st.ByKindState[c.kind]
		if m == nil {
			continue
		}
		if m[c.was] > 0 {
			m[c.was]--
		}
		m[store.StateRunning]++
	}
}

func (t *claimTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}

func (t *claimTable) ids() []int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]int64, 0, len(t.byID))
	for id := range t.byID {
		ids = append(ids, id)
	}
	return ids
}

// runningHeads returns [line, due, id] of every running ordered job.
func (t *claimTable) runningHeads() [][3]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	heads := [][3]int64{}
	for id, c := range t.byID {
		if c.kh != 0 {
			heads = append(heads, [3]int64{c.kh, c.dueUS, id})
		}
	}
	return heads
}
