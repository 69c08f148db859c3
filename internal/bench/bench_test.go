package bench

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The scenarios at toy sizes: each must finish, count every job and report
// numbers that make sense. (The sizes that matter run via `herald bench`.)
func TestScenarios(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	t.Run("Throughput", func(t *testing.T) {
		t.Parallel()
		res, err := Throughput(ctx, Options{}, 3000, 50, 100, 3)
		if err != nil {
			t.Fatal(err)
		}
		if res.ProcessedPerS <= 0 || res.EnqueuePerS <= 0 || res.PickupP99Ms < res.PickupP50Ms {
			t.Errorf("implausible result %+v", res)
		}
	})
	t.Run("Latency", func(t *testing.T) {
		t.Parallel()
		res, err := Latency(ctx, Options{}, 20)
		if err != nil {
			t.Fatal(err)
		}
		if res.Samples != 20 || res.PickupP50Ms <= 0 || res.PickupP99Ms < res.PickupP50Ms {
			t.Errorf("implausible result %+v", res)
		}
	})
	for _, dist := range []string{"random", "roundrobin"} {
		t.Run("Makespan/"+dist, func(t *testing.T) {
			t.Parallel()
			res, err := Makespan(ctx, Options{}, 300, 30, 20*time.Millisecond, dist)
			if err != nil {
				t.Fatal(err)
			}
			if res.Lost+res.OrderViolations+res.Overlaps != 0 {
				t.Errorf("checker: %+v", res)
			}
			// The busiest key's jobs run back to back, so the makespan can
			// never beat the bound.
			if res.BoundS <= 0 || res.MakespanS < res.BoundS {
				t.Errorf("makespan %.3fs below the bound %.3fs", res.MakespanS, res.BoundS)
			}
		})
	}
	t.Run("Backlog", func(t *testing.T) {
		t.Parallel()
		res, err := Backlog(ctx, Options{}, 5000, 500)
		if err != nil {
			t.Fatal(err)
		}
		if res.PeakRSSMiB <= 0 || res.ProcessedPerS <= 0 {
			t.Errorf("implausible result %+v", res)
		}
	})
	for _, batch := range []int{1, 50} {
		t.Run(fmt.Sprintf("HTTP/batch=%d", batch), func(t *testing.T) {
			t.Parallel()
			res, err := HTTP(ctx, Options{}, 300, 8, batch)
			if err != nil {
				t.Fatal(err)
			}
			if res.Failed != 0 || res.RequestsPerS <= 0 || res.JobsPerS != res.RequestsPerS*float64(batch) || res.P99Ms < res.P50Ms {
				t.Errorf("implausible result %+v", res)
			}
		})
	}
	t.Run("UnknownDistribution", func(t *testing.T) {
		t.Parallel()
		if _, err := Makespan(ctx, Options{}, 10, 2, time.Millisecond, "zipf"); err == nil {
			t.Error("unknown distribution accepted")
		}
	})
}

func TestRandomKeyIsDeterministicAndInRange(t *testing.T) {
	t.Parallel()
	pick := randomKey(7)
	seen := map[int]bool{}
	for i := range 1000 {
		k := pick(i)
		if k < 0 || k >= 7 {
			t.Fatalf("key %d out of range", k)
		}
		if pick(i) != k {
			t.Fatalf("job %d mapped to two keys", i)
		}
		seen[k] = true
	}
	if len(seen) != 7 {
		t.Errorf("1000 jobs reached %d of 7 keys", len(seen))
	}
}

// keyOrder, which judges the throughput scenario, counts what it must.
func TestKeyOrder(t *testing.T) {
	t.Parallel()
	type ev struct {
		key   string
		seq   int64
		start bool
	}
	start := func(key string, seq int64) ev { return ev{key, seq, true} }
	end := func(key string) ev { return ev{key: key} }
	tests := []struct {
		name                 string
		events               []ev
		violations, overlaps int
	}{
		{"in order", []ev{start("a", 0), end("a"), start("b", 0), end("b"), start("a", 1), end("a")}, 0, 0},
		{"keys interleaved", []ev{start("a", 0), start("b", 0), end("a"), end("b")}, 0, 0},
		{"skipped seq", []ev{start("a", 1), end("a")}, 1, 0},
		{"ran twice", []ev{start("a", 0), end("a"), start("a", 0), end("a")}, 1, 0},
		{"overlap", []ev{start("a", 0), start("a", 1), end("a"), end("a")}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k := &keyOrder{keys: map[string]*keyRun{}}
			for _, e := range tt.events {
				if e.start {
					k.start(e.key, e.seq)
				} else {
					k.end(e.key)
				}
			}
			if k.violations != tt.violations || k.overlap != tt.overlaps {
				t.Errorf("violations=%d overlaps=%d, want %d %d", k.violations, k.overlap, tt.violations, tt.overlaps)
			}
		})
	}
}

// Counts a scenario cannot run with are refused before anything starts,
// with ErrBadInput, not a panic (keys 0 used to divide by zero).
func TestScenariosRefuseBadCounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var o Options
	tests := []struct {
		name string
		run  func() error
	}{
		{"throughput without keys", func() error { _, err := Throughput(ctx, o, 100, 0, 10, 1); return err }},
		{"throughput without jobs", func() error { _, err := Throughput(ctx, o, 0, 10, 10, 1); return err }},
		{"throughput without producers", func() error { _, err := Throughput(ctx, o, 100, 10, 10, 0); return err }},
		{"throughput without batch", func() error { _, err := Throughput(ctx, o, 100, 10, 0, 1); return err }},
		{"latency without samples", func() error { _, err := Latency(ctx, o, 0); return err }},
		{"makespan without keys", func() error { _, err := Makespan(ctx, o, 10, 0, 0, "random"); return err }},
		{"makespan with negative work", func() error { _, err := Makespan(ctx, o, 10, 10, -time.Second, "random"); return err }},
		{"backlog without keys", func() error { _, err := Backlog(ctx, o, 10, 0); return err }},
		{"http without connections", func() error { _, err := HTTP(ctx, o, 10, 0, 1); return err }},
		{"email without messages", func() error { _, err := Email(ctx, o, "", 0, 1, ""); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.run(); !errors.Is(err, ErrBadInput) {
				t.Fatalf("err = %v, want ErrBadInput", err)
			}
		})
	}
}
