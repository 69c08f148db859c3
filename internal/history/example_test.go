package history_test

import (
	"fmt"
	"time"

	"github.com/heraldmq/herald/internal/history"
)

func ExampleCheck() {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

	acks := []history.Ack{
		{ID: 1, Key: "user-7", Seq: 1},
		{ID: 2, Key: "user-7", Seq: 2},
		{ID: 3, Key: "user-7", Seq: 3},
	}
	recs := []history.Record{
		{ID: 1, Key: "user-7", Seq: 1, Attempt: 1, Start: ms(0), End: ms(10), Outcome: history.Succeeded},
		// Job 2 started before job 1 finished.
		{ID: 2, Key: "user-7", Seq: 2, Attempt: 1, Start: ms(5), End: ms(20), Outcome: history.Succeeded},
		// Job 3 was never delivered.
	}
	rep := history.Check(acks, recs, history.Options{})
	fmt.Println(rep)
	fmt.Println("ok:", rep.OK(), "lost:", rep.LostIDs)
	fmt.Println(rep.Overlaps[0])
	// Output:
	// acknowledged=3 delivered=2 attempts=2 lost=1 unexpected=0 duplicates=0 dead-lettered=0 unfinished=0 mismatched=0 order-violations=0 overlaps=1
	// ok: false lost: [3]
	// key "user-7": seq 2 (id 2 attempt 1) started at 2025-01-01T00:00:00.005Z while seq 1 (id 1 attempt 1) ran [2025-01-01T00:00:00Z, 2025-01-01T00:00:00.01Z)
}
