package history

import (
	"slices"
	"sync"
	"time"
)

// Recorder collects acks and delivery attempts from many goroutines. The
// zero value is ready to use. It only appends to slices under a mutex, so
// recording millions of events is cheap; call Grow first to avoid regrowth.
//
// For the intervals to be meaningful, call Start after the job was received
// and before the handler runs, and call the returned done after the handler
// returned but before the result is reported back to the queue. Recorded
// intervals then cover the real ones, and the queue cannot have handed the
// key to the next job before done took its timestamp.
type Recorder struct {
	mu   sync.Mutex
	acks []Ack
	recs []Record
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{} }

// Grow preallocates room for at least acks more acks and records more
// records.
func (r *Recorder) Grow(acks, records int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acks = slices.Grow(r.acks, acks)
	r.recs = slices.Grow(r.recs, records)
}

// Ack records that the producer was told job a.ID is stored durably.
func (r *Recorder) Ack(a Ack) {
	r.mu.Lock()
	r.acks = append(r.acks, a)
	r.mu.Unlock()
}

// Start records that an attempt starts now and returns done, which records
// that it ended now with the given outcome. Only the first call of done
// counts. If done is never called the record keeps a zero End (see
// MarkCrashed).
func (r *Recorder) Start(id int64, key string, seq int64, attempt int) (done func(Outcome)) {
	// Appending at Start, not at done, keeps attempts that never finish
	// visible to the order check and to Report.Unfinished.
	rec := Record{ID: id, Key: key, Seq: seq, Attempt: attempt, Start: time.Now()}
	r.mu.Lock()
	i := len(r.recs)
	r.recs = append(r.recs, rec)
	r.mu.Unlock()

	finished := false // guarded by r.mu
	return func(o Outcome) {
		end := time.Now()
		r.mu.Lock()
		defer r.mu.Unlock()
		if finished {
			return
		}
		finished = true
		r.recs[i].End = end
		r.recs[i].Outcome = o
	}
}

// Add appends a complete record, e.g. one read back from a log file.
func (r *Recorder) Add(rec Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

// MarkCrashed sets CrashedAt to at on every record that has neither End nor
// CrashedAt, for harnesses that simulate a crash in-process. It returns how
// many records it marked.
func (r *Recorder) MarkCrashed(at time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for i := range r.recs {
		if rec := &r.recs[i]; rec.End.IsZero() && rec.CrashedAt.IsZero() {
			rec.CrashedAt = at
			n++
		}
	}
	return n
}

// Acks returns a copy of the acks recorded so far, in recording order.
func (r *Recorder) Acks() []Ack {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.acks)
}

// Records returns a copy of the records so far, in Start/Add order. Copying
// keeps later done calls from racing with the caller.
func (r *Recorder) Records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recs)
}

// Check is Check(r.Acks(), r.Records(), opts).
func (r *Recorder) Check(opts Options) Report {
	return Check(r.Acks(), r.Records(), opts)
}
