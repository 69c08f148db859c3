package chaos

import (
	"testing"
	"time"

	"github.com/heraldmq/herald/internal/history"
)

// A node frozen after its last lease check sends its attempt after the
// job was rescued, run again (attempt 2) and followed by its key's next
// job: seen in TestChaosPostgresMultiNode under load. A fencing receiver
// refuses that attempt; judged without it, the history is in order.
func TestFenceStale(t *testing.T) {
	t.Parallel()
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	ds := []delivery{
		{Record: history.Record{ID: 1, Key: "k0", Seq: 74, Attempt: 2, Start: at(0), End: at(10), Outcome: history.Succeeded}, jobID: 1114},
		{Record: history.Record{ID: 2, Key: "k0", Seq: 94, Attempt: 1, Start: at(540), End: at(550), Outcome: history.Succeeded}, jobID: 1443},
		// the frozen node's attempt 1 of job 1114, sent on SIGCONT
		{Record: history.Record{ID: 1, Key: "k0", Seq: 74, Attempt: 1, Start: at(930), End: at(940), Outcome: history.Succeeded}, jobID: 1114},
		// the same attempt number again (a crash cut it short) is not stale
		{Record: history.Record{ID: 3, Key: "k1", Seq: 1, Attempt: 1, Start: at(100), CrashedAt: at(101)}, jobID: 7},
		{Record: history.Record{ID: 3, Key: "k1", Seq: 1, Attempt: 1, Start: at(200), End: at(210), Outcome: history.Succeeded}, jobID: 7},
	}
	acks := []history.Ack{{ID: 1, Key: "k0", Seq: 74}, {ID: 2, Key: "k0", Seq: 94}, {ID: 3, Key: "k1", Seq: 1}}
	all := make([]history.Record, len(ds))
	for i, d := range ds {
		all[i] = d.Record
	}
	if rep := history.Check(acks, all, history.Options{}); rep.NumOrderViolations == 0 {
		t.Fatalf("unfenced history has no order violation: %s", rep)
	}
	kept, stale := fenceStale(ds)
	if len(stale) != 1 || stale[0].jobID != 1114 || stale[0].Attempt != 1 {
		t.Fatalf("stale = %+v, want job 1114's attempt 1", stale)
	}
	if len(kept) != 4 {
		t.Fatalf("kept %d records, want 4", len(kept))
	}
	if rep := history.Check(acks, kept, history.Options{}); rep.Err() != nil {
		t.Fatalf("fenced history: %v", rep.Err())
	}
}
