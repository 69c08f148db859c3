package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// The checkpointer, not the store loop's commits, copies the WAL into the
// database: with the writer's own threshold far away (backstopBytes), the
// WAL stays small only if the checkpointer runs.
func TestCheckpointerKeepsWALSmall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	payload := json.RawMessage(`"` + strings.Repeat("x", 2000) + `"`)
	const rounds, batch = 20, 1000 // ~40 MiB of payload, ~80 MiB of WAL in all
	for r := range rounds {
		ps := make([]store.InsertParams, batch)
		for i := range ps {
			ps[i] = store.InsertParams{Kind: "k", Key: "line", Payload: payload, MaxAttempts: 1}
		}
		if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: ps, Now: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if r%5 == 4 {
			time.Sleep(2 * defaultCheckpointEvery) // let it run
		}
	}
	if s.ckpt.runs.Load() == 0 {
		t.Fatal("the checkpointer never ran")
	}
	fi, err := os.Stat(s.path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	if limit := int64(32 << 20); fi.Size() > limit {
		t.Fatalf("WAL is %d MiB after ~80 MiB of writes; want at most %d MiB: checkpoints are not keeping up", fi.Size()>>20, limit>>20)
	}
}

// A burst that leaves a large WAL (here: a reader's snapshot kept the WAL
// from restarting) has it truncated once the writer is idle, so the file
// does not keep its high-water size until the store is closed.
func TestCheckpointerTruncatesLargeWALWhenIdle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	read, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := read.QueryRowContext(ctx, `SELECT count(*) FROM herald_jobs`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	payload := json.RawMessage(`"` + strings.Repeat("x", 4000) + `"`)
	for range 20 { // ~80 MiB of payload: more than truncateBytes of WAL
		ps := make([]store.InsertParams, 1000)
		for i := range ps {
			ps[i] = store.InsertParams{Kind: "k", Key: "line", Payload: payload, MaxAttempts: 1}
		}
		if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: ps, Now: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * defaultCheckpointEvery) // a checkpoint sees the large WAL
	walSize := func() int64 {
		fi, err := os.Stat(s.path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	if size := walSize(); size <= truncateBytes {
		t.Fatalf("WAL is %d MiB with a reader holding it; the test needs more than %d MiB", size>>20, truncateBytes>>20)
	}
	if err := read.Rollback(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.ckpt.truncates.Load() == 0 || walSize() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("WAL still %d MiB (%d truncations) 5 s after the writer went idle", walSize()>>20, s.ckpt.truncates.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The store goes on writing after the truncation.
	if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: []store.InsertParams{{Kind: "k", Key: "line", Payload: payload, MaxAttempts: 1}}, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
}
