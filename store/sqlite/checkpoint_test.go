package sqlite

import (
	"context"
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
