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
// size, through the uniform statement when they share all but key and
// payload. Whatever the mix of rows, and with ids named or left to SQLite,
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
		{name: "uniform, grouped by key", jobs: mixed(groupInsertsFrom+77, nil)},
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

// Rows that differ only in id, key and payload bind the rest once; any
// other difference takes the statement that binds every column.
func TestPendingRowsUniform(t *testing.T) {
	t.Parallel()
	base := pendingRow{id: 1, kh: 7, dueUS: 100, kind: "a", key: "k", payload: []byte("{}"), state: stAvailable, maxAttempts: 3}
	tests := []struct {
		name  string
		other func(r *pendingRow)
		want  bool
	}{
		{"other id, key and payload", func(r *pendingRow) { r.id, r.kh, r.key, r.payload = 2, 8, "j", []byte("[]") }, true},
		{"unordered", func(r *pendingRow) { r.kh, r.key = 0, "" }, true},
		{"other kind", func(r *pendingRow) { r.kind = "b" }, false},
		{"scheduled", func(r *pendingRow) { r.state, r.dueUS = stScheduled, 200 }, false},
		{"other due time", func(r *pendingRow) { r.dueUS = 200 }, false},
		{"other max attempts", func(r *pendingRow) { r.maxAttempts = 4 }, false},
		{"idempotency key", func(r *pendingRow) { r.idem = "x" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			other := base
			tt.other(&other)
			for _, rows := range [][]pendingRow{{base, other}, {other, base}} {
				if got := (&pendingRows{rows: rows}).uniform(); got != tt.want {
					t.Errorf("uniform(%+v) = %v, want %v", rows, got, tt.want)
				}
			}
		})
	}
}

// insertOrder groups a large cycle's rows by line id, each key's rows in
// arrival order, and leaves small cycles and cycles with idempotency keys
// in arrival order.
func TestInsertOrder(t *testing.T) {
	t.Parallel()
	many := func(n int, idem string) []store.InsertParams {
		in := make([]store.InsertParams, n)
		for i := range in {
			in[i] = store.InsertParams{Kind: "a", Key: fmt.Sprintf("k%d", i%5)}
			if i%9 == 0 {
				in[i].Key = "" // unordered
			}
		}
		if idem != "" {
			in[n/2].IdempotencyKey = idem
		}
		return in
	}
	tests := []struct {
		name    string
		in      []store.InsertParams
		grouped bool
	}{
		{"small cycle", many(groupInsertsFrom-1, ""), false},
		{"large cycle", many(groupInsertsFrom, ""), true},
		{"large cycle with an idempotency key", many(3*groupInsertsFrom, "once"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			khs, order := insertOrder(tt.in)
			for i, in := range tt.in {
				if khs[i] != lineID(in.Key) {
					t.Fatalf("line id %d: %d, want %d", i, khs[i], lineID(in.Key))
				}
			}
			if !tt.grouped {
				if order != nil {
					t.Fatalf("order %v, want arrival order (nil)", order[:10])
				}
				return
			}
			if len(order) != len(tt.in) {
				t.Fatalf("order has %d entries for %d rows", len(order), len(tt.in))
			}
			seen := make([]bool, len(tt.in))
			for n, i := range order {
				if seen[i] {
					t.Fatalf("row %d written twice", i)
				}
				seen[i] = true
				if n == 0 {
					continue
				}
				prev := order[n-1]
				switch {
				case khs[prev] > khs[i]:
					t.Fatalf("row %d (line %d) written after row %d (line %d)", i, khs[i], prev, khs[prev])
				case khs[prev] == khs[i] && prev > i:
					t.Fatalf("key %q: row %d written after row %d", tt.in[i].Key, i, prev)
				}
			}
		})
	}
}
