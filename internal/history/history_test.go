package history_test

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/heraldmq/herald/internal/history"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// at is t0 plus ms milliseconds.
func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// ok is a finished successful attempt 1 of id over [start, end) ms.
func ok(id int64, key string, seq int64, start, end int) history.Record {
	return history.Record{ID: id, Key: key, Seq: seq, Attempt: 1, Start: at(start), End: at(end), Outcome: history.Succeeded}
}

func failed(id int64, key string, seq int64, attempt, start, end int) history.Record {
	return history.Record{ID: id, Key: key, Seq: seq, Attempt: attempt, Start: at(start), End: at(end), Outcome: history.Failed}
}

func retry(r history.Record, attempt int) history.Record {
	r.Attempt = attempt
	return r
}

// crashed is an attempt whose end was never observed; crashAt < 0 leaves
// CrashedAt zero.
func crashed(id int64, key string, seq int64, attempt, start, crashAt int) history.Record {
	r := history.Record{ID: id, Key: key, Seq: seq, Attempt: attempt, Start: at(start)}
	if crashAt >= 0 {
		r.CrashedAt = at(crashAt)
	}
	return r
}

// acks acknowledges ids 1..n on key with seq == id.
func acks(key string, n int) []history.Ack {
	var a []history.Ack
	for i := 1; i <= n; i++ {
		a = append(a, history.Ack{ID: int64(i), Key: key, Seq: int64(i)})
	}
	return a
}

// counts is the part of a Report the table compares exactly.
type counts struct {
	Acknowledged, Delivered, Attempts                                int
	Lost, Unexpected, Duplicates, DeadLettered, Unfinished, Mismatch int
	LostIDs, UnexpectedIDs, DuplicateIDs, MismatchedIDs              []int64
	Order, Overlaps                                                  int
	OK                                                               bool
}

func countsOf(r history.Report) counts {
	return counts{
		Acknowledged: r.Acknowledged, Delivered: r.Delivered, Attempts: r.Attempts,
		Lost: r.Lost, Unexpected: r.Unexpected, Duplicates: r.Duplicates,
		DeadLettered: r.DeadLettered, Unfinished: r.Unfinished, Mismatch: r.Mismatched,
		LostIDs: r.LostIDs, UnexpectedIDs: r.UnexpectedIDs, DuplicateIDs: r.DuplicateIDs,
		MismatchedIDs: r.MismatchedIDs,
		Order:         r.NumOrderViolations, Overlaps: r.NumOverlaps, OK: r.OK(),
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		acks []history.Ack
		recs []history.Record
		opts history.Options
		want counts
	}{
		{
			name: "empty",
			want: counts{OK: true},
		},
		{
			name: "clean",
			acks: acks("a", 3),
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(2, "a", 2, 10, 20), ok(3, "a", 3, 25, 30)},
			want: counts{Acknowledged: 3, Delivered: 3, Attempts: 3, OK: true},
		},
		{
			name: "clean with failed retry of the same seq",
			acks: acks("a", 2),
			recs: []history.Record{failed(1, "a", 1, 1, 0, 10), retry(ok(1, "a", 1, 10, 20), 2), ok(2, "a", 2, 20, 30)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 3, OK: true},
		},
		{
			name: "input order does not matter",
			acks: acks("a", 3),
			recs: []history.Record{ok(3, "a", 3, 25, 30), ok(1, "a", 1, 0, 10), ok(2, "a", 2, 10, 20)},
			want: counts{Acknowledged: 3, Delivered: 3, Attempts: 3, OK: true},
		},
		{
			name: "lost",
			acks: acks("a", 3),
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(3, "a", 3, 10, 20)},
			want: counts{Acknowledged: 3, Delivered: 2, Attempts: 2, Lost: 1, LostIDs: []int64{2}},
		},
		{
			name: "only failed attempts is lost",
			acks: acks("a", 1),
			recs: []history.Record{failed(1, "a", 1, 1, 0, 10), failed(1, "a", 1, 2, 10, 20)},
			want: counts{Acknowledged: 1, Attempts: 2, Lost: 1, LostIDs: []int64{1}},
		},
		{
			name: "unexpected",
			acks: acks("a", 1),
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(9, "b", 1, 0, 10), failed(8, "c", 1, 1, 0, 10)},
			want: counts{Acknowledged: 1, Delivered: 2, Attempts: 3, Unexpected: 2, UnexpectedIDs: []int64{8, 9}},
		},
		{
			name: "duplicate is allowed",
			acks: acks("a", 2),
			recs: []history.Record{ok(1, "a", 1, 0, 10), retry(ok(1, "a", 1, 10, 20), 2), ok(2, "a", 2, 20, 30)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 3, Duplicates: 1, DuplicateIDs: []int64{1}, OK: true},
		},
		{
			name: "order violation",
			acks: acks("a", 2),
			recs: []history.Record{ok(2, "a", 2, 0, 10), ok(1, "a", 1, 10, 20)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 2, Order: 1},
		},
		{
			name: "retry of a lower seq after a higher seq started",
			acks: acks("a", 2),
			recs: []history.Record{failed(1, "a", 1, 1, 0, 10), ok(2, "a", 2, 10, 20), retry(ok(1, "a", 1, 20, 30), 2)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 3, Order: 1},
		},
		{
			name: "each late start is one violation",
			acks: acks("a", 3),
			recs: []history.Record{ok(3, "a", 3, 0, 10), ok(1, "a", 1, 10, 20), ok(2, "a", 2, 20, 30)},
			want: counts{Acknowledged: 3, Delivered: 3, Attempts: 3, Order: 2},
		},
		{
			name: "same start instant is an overlap, not an order violation",
			acks: acks("a", 2),
			recs: []history.Record{ok(2, "a", 2, 0, 10), ok(1, "a", 1, 0, 10)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 2, Overlaps: 1},
		},
		{
			name: "overlap of two attempts of one job",
			acks: acks("a", 1),
			recs: []history.Record{failed(1, "a", 1, 1, 0, 10), retry(ok(1, "a", 1, 5, 15), 2)},
			want: counts{Acknowledged: 1, Delivered: 1, Attempts: 2, Overlaps: 1},
		},
		{
			name: "overlap with a long earlier attempt",
			acks: acks("a", 3),
			// 2 is inside 1; 3 starts after 2 ended but while 1 still runs.
			recs: []history.Record{ok(1, "a", 1, 0, 100), ok(2, "a", 2, 10, 20), ok(3, "a", 3, 30, 40)},
			want: counts{Acknowledged: 3, Delivered: 3, Attempts: 3, Overlaps: 2},
		},
		{
			name: "next starts before previous finished",
			acks: acks("a", 2),
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(2, "a", 2, 5, 15)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 2, Overlaps: 1},
		},
		{
			name: "next starts exactly when previous finished",
			acks: acks("a", 2),
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(2, "a", 2, 10, 15)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 2, OK: true},
		},
		{
			name: "different keys may overlap",
			acks: []history.Ack{{ID: 1, Key: "a", Seq: 1}, {ID: 2, Key: "b", Seq: 1}},
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(2, "b", 1, 5, 15)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 2, OK: true},
		},
		{
			name: "crashed attempt overlapping its rerun",
			acks: acks("a", 1),
			recs: []history.Record{crashed(1, "a", 1, 1, 0, 10), retry(ok(1, "a", 1, 5, 15), 2)},
			want: counts{Acknowledged: 1, Delivered: 1, Attempts: 2, Overlaps: 1},
		},
		{
			name: "crashed attempt rerun after the crash",
			acks: acks("a", 2),
			recs: []history.Record{crashed(1, "a", 1, 1, 0, 10), retry(ok(1, "a", 1, 10, 15), 2), ok(2, "a", 2, 20, 30)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 3, OK: true},
		},
		{
			name: "crashed attempt overlapping the next seq",
			acks: acks("a", 2),
			recs: []history.Record{crashed(1, "a", 1, 1, 0, 10), retry(ok(1, "a", 1, 10, 15), 2), ok(2, "a", 2, 5, 30)},
			// 2 starts inside 1's crashed attempt, and 1 is retried after 2 started.
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 3, Overlaps: 2, Order: 1},
		},
		{
			name: "unfinished attempt without crash time is not overlap-checked",
			acks: acks("a", 1),
			recs: []history.Record{crashed(1, "a", 1, 1, 0, -1), retry(ok(1, "a", 1, 1, 15), 2)},
			want: counts{Acknowledged: 1, Delivered: 1, Attempts: 2, Unfinished: 1, OK: true},
		},
		{
			name: "unfinished attempt is still order-checked",
			acks: acks("a", 2),
			recs: []history.Record{ok(2, "a", 2, 0, 10), crashed(1, "a", 1, 1, 20, -1)},
			want: counts{Acknowledged: 2, Delivered: 1, Attempts: 2, Unfinished: 1, Lost: 1, LostIDs: []int64{1}, Order: 1},
		},
		{
			name: "dead-lettered as expected",
			acks: acks("poison", 2),
			recs: []history.Record{failed(1, "poison", 1, 1, 0, 10), failed(1, "poison", 1, 2, 10, 20), ok(2, "poison", 2, 20, 30)},
			opts: history.Options{ExpectDeadLettered: map[int64]bool{1: true}},
			want: counts{Acknowledged: 2, Delivered: 1, Attempts: 3, DeadLettered: 1, OK: true},
		},
		{
			name: "expected dead-lettered but never attempted is lost",
			acks: acks("poison", 1),
			opts: history.Options{ExpectDeadLettered: map[int64]bool{1: true}},
			want: counts{Acknowledged: 1, Lost: 1, LostIDs: []int64{1}},
		},
		{
			name: "expected and confirmed dead-lettered, no attempt recorded",
			acks: acks("poison", 1),
			opts: history.Options{ExpectDeadLettered: map[int64]bool{1: true}, ConfirmedDead: map[int64]bool{1: true}},
			want: counts{Acknowledged: 1, DeadLettered: 1, OK: true},
		},
		{
			name: "confirmed dead but not expected is lost",
			acks: acks("a", 1),
			opts: history.Options{ConfirmedDead: map[int64]bool{1: true}},
			want: counts{Acknowledged: 1, Lost: 1, LostIDs: []int64{1}},
		},
		{
			name: "expected dead-lettered but succeeded is delivered",
			acks: acks("poison", 1),
			recs: []history.Record{ok(1, "poison", 1, 0, 10)},
			opts: history.Options{ExpectDeadLettered: map[int64]bool{1: true}},
			want: counts{Acknowledged: 1, Delivered: 1, Attempts: 1, OK: true},
		},
		{
			name: "failed but not expected dead-lettered is lost",
			acks: acks("poison", 1),
			recs: []history.Record{failed(1, "poison", 1, 1, 0, 10)},
			opts: history.Options{ExpectDeadLettered: map[int64]bool{2: true}},
			want: counts{Acknowledged: 1, Attempts: 1, Lost: 1, LostIDs: []int64{1}},
		},
		{
			name: "indeterminate delivered or not",
			acks: acks("a", 1),
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(7, "a", 2, 10, 20)},
			opts: history.Options{Indeterminate: map[int64]bool{7: true, 8: true}},
			want: counts{Acknowledged: 1, Delivered: 2, Attempts: 2, OK: true},
		},
		{
			name: "indeterminate but acknowledged is checked",
			acks: acks("a", 1),
			opts: history.Options{Indeterminate: map[int64]bool{1: true}},
			want: counts{Acknowledged: 1, Lost: 1, LostIDs: []int64{1}},
		},
		{
			name: "unordered key is never order- or overlap-checked",
			acks: []history.Ack{{ID: 1, Seq: 1}, {ID: 2, Seq: 2}, {ID: 3, Seq: 3}},
			recs: []history.Record{
				{ID: 3, Seq: 3, Attempt: 1, Start: at(0), End: at(50), Outcome: history.Succeeded},
				{ID: 1, Seq: 1, Attempt: 1, Start: at(5), End: at(50), Outcome: history.Succeeded},
				{ID: 2, Seq: 2, Attempt: 1, Start: at(5), End: at(50), Outcome: history.Succeeded},
			},
			want: counts{Acknowledged: 3, Delivered: 3, Attempts: 3, OK: true},
		},
		{
			name: "record disagrees with its ack",
			acks: acks("a", 2),
			recs: []history.Record{ok(1, "a", 1, 0, 10), ok(2, "b", 2, 10, 20)},
			want: counts{Acknowledged: 2, Delivered: 2, Attempts: 2, Mismatch: 1, MismatchedIDs: []int64{2}},
		},
		{
			name: "conflicting repeated ack",
			acks: append(acks("a", 1), history.Ack{ID: 1, Key: "a", Seq: 5}, history.Ack{ID: 1, Key: "a", Seq: 1}),
			recs: []history.Record{ok(1, "a", 1, 0, 10)},
			want: counts{Acknowledged: 1, Delivered: 1, Attempts: 1, Mismatch: 1, MismatchedIDs: []int64{1}},
		},
		{
			name: "identical repeated ack",
			acks: append(acks("a", 1), acks("a", 1)...),
			recs: []history.Record{ok(1, "a", 1, 0, 10)},
			want: counts{Acknowledged: 1, Delivered: 1, Attempts: 1, OK: true},
		},
		{
			// The id range is too wide for a dense index; exercises the map.
			name: "extreme ids",
			acks: []history.Ack{{ID: math.MinInt64, Key: "a", Seq: 1}, {ID: -5, Key: "a", Seq: 2}, {ID: math.MaxInt64, Key: "a", Seq: 3}},
			recs: []history.Record{ok(math.MinInt64, "a", 1, 0, 10), ok(-5, "a", 2, 10, 20), ok(0, "a", 3, 20, 30)},
			want: counts{Acknowledged: 3, Delivered: 3, Attempts: 3, Lost: 1, LostIDs: []int64{math.MaxInt64}, Unexpected: 1, UnexpectedIDs: []int64{0}},
		},
		{
			name: "unacked ids just outside a dense id range",
			acks: []history.Ack{{ID: 10, Key: "a", Seq: 1}, {ID: 11, Key: "a", Seq: 2}},
			recs: []history.Record{ok(10, "a", 1, 0, 10), ok(11, "a", 2, 10, 20), ok(9, "b", 1, 0, 1), ok(12, "b", 2, 1, 2), ok(5000, "b", 3, 2, 3)},
			want: counts{Acknowledged: 2, Delivered: 5, Attempts: 5, Unexpected: 3, UnexpectedIDs: []int64{9, 12, 5000}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rep := history.Check(tt.acks, tt.recs, tt.opts)
			if diff := cmp.Diff(tt.want, countsOf(rep)); diff != "" {
				t.Errorf("Check() mismatch (-want +got):\n%s\nreport: %v", diff, rep)
			}
			if got, want := len(rep.OrderViolations), rep.NumOrderViolations; got != want {
				t.Errorf("listed %d order violations, want %d", got, want)
			}
			if got, want := len(rep.Overlaps), rep.NumOverlaps; got != want {
				t.Errorf("listed %d overlaps, want %d", got, want)
			}
			if err := rep.Err(); (err == nil) != rep.OK() {
				t.Errorf("Err() = %v, OK() = %v", err, rep.OK())
			}
		})
	}
}

func TestCheckViolationDetails(t *testing.T) {
	t.Parallel()
	r2 := ok(2, "k", 2, 0, 10)
	r1 := ok(1, "k", 1, 5, 20)
	rep := history.Check(acks("k", 2), []history.Record{r1, r2}, history.Options{})
	wantOrder := []history.OrderViolation{{Key: "k", Earlier: r2, Later: r1}}
	if diff := cmp.Diff(wantOrder, rep.OrderViolations); diff != "" {
		t.Errorf("OrderViolations mismatch (-want +got):\n%s", diff)
	}
	wantOverlaps := []history.Overlap{{Key: "k", Earlier: r2, Later: r1}}
	if diff := cmp.Diff(wantOverlaps, rep.Overlaps); diff != "" {
		t.Errorf("Overlaps mismatch (-want +got):\n%s", diff)
	}
	err := rep.Err()
	if err == nil {
		t.Fatal("Err() = nil, want an error")
	}
	for _, want := range []string{"1 order violations", "1 overlaps", `key "k": seq 1 (id 1 attempt 1)`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Err() = %q, want it to contain %q", err, want)
		}
	}
}

func TestCheckMaxListed(t *testing.T) {
	t.Parallel()
	const n = 30
	// Every job is lost, unexpected (id+1000) and out of order on its key.
	var as []history.Ack
	var recs []history.Record
	for i := n; i >= 1; i-- {
		as = append(as, history.Ack{ID: int64(i), Key: "a", Seq: int64(i)})
		recs = append(recs, ok(int64(i+1000), "b", int64(i), n-i, n-i+1))
	}
	tests := []struct {
		max, listed int
	}{
		{0, history.DefaultMaxListed},
		{5, 5},
		{-1, n},
		{100, n},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.max), func(t *testing.T) {
			t.Parallel()
			rep := history.Check(as, recs, history.Options{MaxListed: tt.max})
			if rep.Lost != n || rep.Unexpected != n || rep.NumOrderViolations != n-1 {
				t.Fatalf("counts: %v", rep)
			}
			var wantLost, wantUnexpected []int64
			for i := 1; i <= tt.listed; i++ {
				wantLost = append(wantLost, int64(i))
				wantUnexpected = append(wantUnexpected, int64(i+1000))
			}
			if diff := cmp.Diff(wantLost, rep.LostIDs); diff != "" {
				t.Errorf("LostIDs mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(wantUnexpected, rep.UnexpectedIDs); diff != "" {
				t.Errorf("UnexpectedIDs mismatch (-want +got):\n%s", diff)
			}
			if got, want := len(rep.OrderViolations), min(tt.listed, n-1); got != want {
				t.Fatalf("listed %d order violations, want %d", got, want)
			}
			// Earliest first: seq 29 started at 1ms, right after seq 30.
			if v := rep.OrderViolations[0]; v.Later.Seq != n-1 || v.Earlier.Seq != n {
				t.Errorf("first violation = %v, want seq %d after seq %d", v, n-1, n)
			}
			if err := rep.Err(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d lost", n)) {
				t.Errorf("Err() = %v, want it to mention %d lost", err, n)
			}
		})
	}
}

// TestCheckListsEarliestViolations feeds violations latest first, so the
// capped lists must select rather than take the first ones found.
func TestCheckListsEarliestViolations(t *testing.T) {
	t.Parallel()
	const keys = 30
	var as []history.Ack
	var recs []history.Record
	for k := range keys {
		key := fmt.Sprintf("k%02d", k)
		base := (keys - k) * 100 // later keys misbehave earlier
		id := int64(2 * k)
		as = append(as, history.Ack{ID: id, Key: key, Seq: 1}, history.Ack{ID: id + 1, Key: key, Seq: 2})
		// Seq 2 runs first; seq 1 starts while it still runs.
		recs = append(recs, ok(id+1, key, 2, base, base+50), ok(id, key, 1, base+10, base+60))
	}
	rep := history.Check(as, recs, history.Options{MaxListed: 5})
	if rep.NumOrderViolations != keys || rep.NumOverlaps != keys {
		t.Fatalf("counts: %v", rep)
	}
	var gotOrder, gotOverlap []string
	for _, v := range rep.OrderViolations {
		gotOrder = append(gotOrder, v.Key)
	}
	for _, o := range rep.Overlaps {
		gotOverlap = append(gotOverlap, o.Key)
	}
	want := []string{"k29", "k28", "k27", "k26", "k25"}
	if diff := cmp.Diff(want, gotOrder); diff != "" {
		t.Errorf("listed order violations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, gotOverlap); diff != "" {
		t.Errorf("listed overlaps (-want +got):\n%s", diff)
	}
}

func TestReportString(t *testing.T) {
	t.Parallel()
	rep := history.Check(acks("a", 2), []history.Record{ok(1, "a", 1, 0, 10)}, history.Options{})
	const want = "acknowledged=2 delivered=1 attempts=1 lost=1 unexpected=0 duplicates=0 dead-lettered=0 unfinished=0 mismatched=0 order-violations=0 overlaps=0"
	if got := rep.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := rep.Err().Error(), "history: 1 lost (ids 2) ["+want+"]"; got != want {
		t.Errorf("Err() = %q, want %q", got, want)
	}
}

func TestOutcomeString(t *testing.T) {
	t.Parallel()
	for o, want := range map[history.Outcome]string{
		history.Unknown: "unknown", history.Succeeded: "succeeded", history.Failed: "failed", 7: "Outcome(7)",
	} {
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}

// TestRecorderConcurrent runs many workers, each owning some keys and
// processing them in order, while readers snapshot the Recorder.
func TestRecorderConcurrent(t *testing.T) {
	t.Parallel()
	const workers, keysPerWorker, jobsPerKey = 16, 4, 50
	var r history.Recorder // zero value must be usable
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = r.Records()
				_ = r.Acks()
			}
		}
	})
	for w := range workers {
		wg.Go(func() {
			for k := range keysPerWorker {
				key := fmt.Sprintf("w%d-k%d", w, k)
				for s := range jobsPerKey {
					id := int64((w*keysPerWorker+k)*jobsPerKey + s)
					r.Ack(history.Ack{ID: id, Key: key, Seq: int64(s)})
				}
			}
			for k := range keysPerWorker {
				key := fmt.Sprintf("w%d-k%d", w, k)
				for s := range jobsPerKey {
					id := int64((w*keysPerWorker+k)*jobsPerKey + s)
					// Every 10th job fails once and is retried.
					if s%10 == 0 {
						r.Start(id, key, int64(s), 1)(history.Failed)
					}
					done := r.Start(id, key, int64(s), 2)
					done(history.Succeeded)
					done(history.Failed) // ignored: only the first call counts
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	rep := r.Check(history.Options{})
	const jobs = workers * keysPerWorker * jobsPerKey
	want := counts{Acknowledged: jobs, Delivered: jobs, Attempts: jobs + jobs/10, OK: true}
	if diff := cmp.Diff(want, countsOf(rep)); diff != "" {
		t.Errorf("Check() mismatch (-want +got):\n%s\nreport: %v", diff, rep)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
}

func TestRecorderStartAddMarkCrashed(t *testing.T) {
	t.Parallel()
	r := history.NewRecorder()
	r.Grow(4, 4)
	r.Ack(history.Ack{ID: 1, Key: "a", Seq: 1})
	r.Ack(history.Ack{ID: 2, Key: "a", Seq: 2})
	r.Add(failed(1, "a", 1, 1, 0, 10))

	before := time.Now()
	r.Start(1, "a", 1, 2) // never finishes: the process "crashes"
	if got := r.Check(history.Options{}).Unfinished; got != 1 {
		t.Fatalf("Unfinished = %d before MarkCrashed, want 1", got)
	}
	crash := time.Now()
	if n := r.MarkCrashed(crash); n != 1 {
		t.Fatalf("MarkCrashed() = %d, want 1", n)
	}
	if n := r.MarkCrashed(crash.Add(time.Hour)); n != 0 {
		t.Fatalf("second MarkCrashed() = %d, want 0", n)
	}
	r.Start(1, "a", 1, 3)(history.Succeeded)
	r.Start(2, "a", 2, 1)(history.Succeeded)

	recs := r.Records()
	if len(recs) != 4 {
		t.Fatalf("Records() has %d records, want 4", len(recs))
	}
	c := recs[1]
	if c.Attempt != 2 || c.Outcome != history.Unknown || !c.End.IsZero() || !c.CrashedAt.Equal(crash) || c.Start.Before(before) {
		t.Errorf("crashed record = %+v", c)
	}
	if s := recs[2]; s.Outcome != history.Succeeded || s.End.Before(s.Start) || s.Start.Before(crash) {
		t.Errorf("rerun record = %+v", s)
	}
	if diff := cmp.Diff([]history.Ack{{ID: 1, Key: "a", Seq: 1}, {ID: 2, Key: "a", Seq: 2}}, r.Acks()); diff != "" {
		t.Errorf("Acks() mismatch (-want +got):\n%s", diff)
	}
	rep := r.Check(history.Options{})
	want := counts{Acknowledged: 2, Delivered: 2, Attempts: 4, OK: true}
	if diff := cmp.Diff(want, countsOf(rep)); diff != "" {
		t.Errorf("Check() mismatch (-want +got):\n%s\nreport: %v", diff, rep)
	}

	// Records is a snapshot: changing it must not affect the Recorder.
	recs[0].Outcome = history.Succeeded
	if got := r.Records()[0].Outcome; got != history.Failed {
		t.Errorf("Recorder changed through Records() copy: outcome %v", got)
	}
}

// TestCheckLargeLinear guards against quadratic behavior: one hot key with
// many attempts and many keys with few must both stay fast.
func TestCheckLargeLinear(t *testing.T) {
	t.Parallel()
	n := 200_000
	if testing.Short() {
		n = 20_000
	}
	as, recs := genHistory(n, 1) // one key
	rep := history.Check(as, recs, history.Options{})
	if !rep.OK() || rep.Delivered != n {
		t.Fatalf("one hot key: %v", rep)
	}
	keys := n / 5
	as, recs = genHistory(n, keys)
	// Among many keys, swap the times of seq 0 and 1 of key 7 (records 7 and
	// 7+keys), and lose the last job.
	a, b := &recs[7], &recs[7+keys]
	a.Start, b.Start = b.Start, a.Start
	a.End, b.End = b.End, a.End
	recs = recs[:len(recs)-1]
	rep = history.Check(as, recs, history.Options{})
	if rep.NumOrderViolations != 1 || rep.NumOverlaps != 0 || rep.Lost != 1 || rep.Delivered != n-1 {
		t.Fatalf("many keys: %v", rep)
	}
}

// genHistory returns a clean history of n jobs spread round-robin over keys
// keys, each key's jobs running back to back in seq order.
func genHistory(n, keys int) ([]history.Ack, []history.Record) {
	as := make([]history.Ack, n)
	recs := make([]history.Record, n)
	names := make([]string, keys)
	for k := range names {
		names[k] = fmt.Sprintf("key-%d", k)
	}
	for i := range n {
		k, seq := i%keys, int64(i/keys)
		as[i] = history.Ack{ID: int64(i), Key: names[k], Seq: seq}
		start := t0.Add(time.Duration(seq) * time.Millisecond)
		recs[i] = history.Record{
			ID: int64(i), Key: names[k], Seq: seq, Attempt: 1,
			Start: start, End: start.Add(time.Millisecond), Outcome: history.Succeeded,
		}
	}
	return as, recs
}

func BenchmarkCheck(b *testing.B) {
	const n, keys = 1_000_000, 200_000
	as, recs := genHistory(n, keys)
	b.ReportAllocs()
	for b.Loop() {
		rep := history.Check(as, recs, history.Options{})
		if !rep.OK() {
			b.Fatal(rep.Err())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/record")
}

// With Options.Faults, a duplicate is recovered only if a fault hit while
// one of its successes was in flight, before the job ran again.
func TestCheckDuplicatesAgainstFaults(t *testing.T) {
	t.Parallel()
	// Job 1 succeeds over [0, 10) ms and again over [50, 60) ms.
	dup := []history.Record{ok(1, "a", 1, 0, 10), retry(ok(1, "a", 1, 50, 60), 2)}
	single := []history.Record{ok(1, "a", 1, 0, 10)}
	tests := []struct {
		name                     string
		recs                     []history.Record
		faults                   []history.Fault
		queueFailed              map[history.AttemptRef]bool
		recovered, unexplained   int
		wantOK                   bool
		wantUnexplainedListedIDs []int64
	}{
		{name: "nil faults keep duplicates informational", recs: dup, faults: nil, wantOK: true},
		{name: "no fault at all", recs: dup, faults: []history.Fault{}, unexplained: 1, wantUnexplainedListedIDs: []int64{1}},
		{name: "kill between the two successes", recs: dup, faults: []history.Fault{{From: at(30), To: at(30)}}, recovered: 1, wantOK: true},
		{name: "kill during the first success", recs: dup, faults: []history.Fault{{From: at(5), To: at(5)}}, recovered: 1, wantOK: true},
		{name: "stall window covering the first success", recs: dup, faults: []history.Fault{{From: at(-20), To: at(40)}}, recovered: 1, wantOK: true},
		{name: "fault before the first success", recs: dup, faults: []history.Fault{{From: at(-20), To: at(-10)}}, unexplained: 1, wantUnexplainedListedIDs: []int64{1}},
		{name: "fault after the second start", recs: dup, faults: []history.Fault{{From: at(55), To: at(70)}}, unexplained: 1, wantUnexplainedListedIDs: []int64{1}},
		{name: "no duplicate", recs: single, faults: []history.Fault{}, wantOK: true},
		{name: "queue recorded the first success as failed", recs: dup, faults: []history.Fault{},
			queueFailed: map[history.AttemptRef]bool{{ID: 1, Attempt: 1}: true}, recovered: 1, wantOK: true},
		{name: "queue recorded the second attempt as failed", recs: dup, faults: []history.Fault{},
			queueFailed: map[history.AttemptRef]bool{{ID: 1, Attempt: 2}: true}, unexplained: 1, wantUnexplainedListedIDs: []int64{1}},
		{name: "queue recorded another job's attempt as failed", recs: dup, faults: []history.Fault{},
			queueFailed: map[history.AttemptRef]bool{{ID: 2, Attempt: 1}: true}, unexplained: 1, wantUnexplainedListedIDs: []int64{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rep := history.Check(acks("a", 1), tt.recs, history.Options{Faults: tt.faults, QueueFailed: tt.queueFailed})
			if rep.RecoveredDuplicates != tt.recovered || rep.UnexplainedDuplicates != tt.unexplained || rep.OK() != tt.wantOK {
				t.Errorf("recovered=%d unexplained=%d ok=%v, want %d %d %v (%s)", rep.RecoveredDuplicates, rep.UnexplainedDuplicates, rep.OK(),
					tt.recovered, tt.unexplained, tt.wantOK, rep)
			}
			if diff := cmp.Diff(tt.wantUnexplainedListedIDs, rep.UnexplainedDuplicateIDs); diff != "" {
				t.Errorf("UnexplainedDuplicateIDs (-want +got):\n%s", diff)
			}
			if !tt.wantOK && !strings.Contains(fmt.Sprint(rep.Err()), "unexplained duplicates") {
				t.Errorf("Err() = %v, want it to name the unexplained duplicates", rep.Err())
			}
		})
	}
}
