package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// A cycle's rows go out as multi-row inserts in chunks of every prepared
// size. Whatever the mix of rows, and with ids named or left to SQLite,
// every job must read back exactly as it was inserted.
func TestInsertChunkShapes(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	job := func(i int) store.InsertParams {
		return store.InsertParams{Kind: "a", Key: fmt.Sprintf("k%d", i%7), Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), MaxAttempts: 3}
	}
	mixed := func(n int, odd func(i int, p *store.InsertParams)) []store.InsertParams {
		ps := make([]store.InsertParams, n)
		for i := range ps {
			ps[i] = job(i)
			if odd != nil {
				odd(i, &ps[i])
			}
		}
		return ps
	}
	tests := []struct {
		name string
		jobs []store.InsertParams
	}{
		{name: "uniform, every chunk size", jobs: mixed(256+64+32+16+8+4+2+1, nil)},
		{name: "another kind inside a chunk", jobs: mixed(77, func(i int, p *store.InsertParams) {
			if i == 70 {
				p.Kind = "b"
			}
		})},
		{name: "scheduled together", jobs: mixed(20, func(_ int, p *store.InsertParams) {
			p.RunAt = now.Add(time.Hour)
		})},
		{name: "scheduled and unordered rows", jobs: mixed(40, func(i int, p *store.InsertParams) {
			if i%5 == 0 {
				p.RunAt = now.Add(time.Duration(i) * time.Minute)
			}
			if i%9 == 0 {
				p.Key = ""
			}
		})},
		{name: "attempts and idempotency keys", jobs: mixed(33, func(i int, p *store.InsertParams) {
			if i%4 == 0 {
				p.MaxAttempts = 1 + i
			}
			if i%6 == 0 {
				p.IdempotencyKey = fmt.Sprintf("idem-%d", i)
			}
		})},
	}
	for _, tt := range tests {
		for _, auto := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/auto ids %v", tt.name, auto), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				s := openTest(t)
				s.exchangeMu.Lock()
				s.rowidIsLastID = auto
				s.exchangeMu.Unlock()
				res, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: tt.jobs, Now: now})
				if err != nil {
					t.Fatal(err)
				}
				for i, in := range tt.jobs {
					got, err := s.Get(ctx, res[i].Job.ID)
					if err != nil {
						t.Fatalf("job %d: %v", i, err)
					}
					wantRun, wantState := now, store.StateAvailable
					if in.RunAt.After(now) {
						wantRun, wantState = in.RunAt, store.StateScheduled
					}
					if got.Kind != in.Kind || got.Key != in.Key || string(got.Payload) != string(in.Payload) ||
						got.MaxAttempts != in.MaxAttempts || got.IdempotencyKey != in.IdempotencyKey ||
						!got.RunAt.Equal(wantRun) || !got.DueAt.Equal(wantRun) || !got.CreatedAt.Equal(now) ||
						got.State != wantState || got.Attempt != 0 {
						t.Errorf("job %d reads back as %+v; inserted %+v", i, got, in)
					}
				}
			})
		}
	}
}
