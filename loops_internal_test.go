package herald

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldmq/herald/internal/engine"
	"github.com/heraldmq/herald/store"
)

// Splitting Workers and kind caps over store loops never exceeds the
// configured total and leaves nothing over.
func TestShare(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n, loops int
		want     []int
	}{
		{1000, 2, []int{500, 500}},
		{5, 2, []int{3, 2}},
		{7, 3, []int{3, 2, 2}},
		{1, 2, []int{1, 0}},
		{1, 1, []int{1}},
	}
	for _, tt := range tests {
		var got []int
		for i := range tt.loops {
			got = append(got, share(tt.n, i, tt.loops))
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("share(%d over %d) (-want +got):\n%s", tt.n, tt.loops, diff)
		}
	}
}

func TestShareKinds(t *testing.T) {
	t.Parallel()
	kinds := map[string]engine.Kind{
		"capped":   {Concurrency: 3, MaxAttempts: 5},
		"single":   {Concurrency: 1},
		"uncapped": {},
	}
	caps := func(ks map[string]engine.Kind) map[string]int {
		out := map[string]int{}
		for name, k := range ks {
			out[name] = k.Concurrency
		}
		return out
	}
	tests := []struct {
		name     string
		i, loops int
		want     map[string]int
	}{
		{"one loop keeps everything", 0, 1, map[string]int{"capped": 3, "single": 1, "uncapped": 0}},
		{"first of two", 0, 2, map[string]int{"capped": 2, "single": 1, "uncapped": 0}},
		{"second of two leaves out the kind it has no share of", 1, 2, map[string]int{"capped": 1, "uncapped": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := shareKinds(kinds, tt.i, tt.loops)
			if diff := cmp.Diff(tt.want, caps(got)); diff != "" {
				t.Errorf("caps (-want +got):\n%s", diff)
			}
			if k, ok := got["capped"]; ok && k.MaxAttempts != 5 {
				t.Errorf("the rest of a kind's policy was lost: %+v", k)
			}
		})
	}
	if kinds["capped"].Concurrency != 3 {
		t.Error("shareKinds changed its input")
	}
}

// oneLoop and twoLoops stand for drivers without and with
// store.ParallelLoops; loops only asks them that.
type (
	oneLoop  struct{ store.Driver }
	twoLoops struct{ store.Driver }
)

func (twoLoops) PreferredLoops() int { return 2 }

func TestLoops(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                string
		drv                 store.Driver
		storeLoops, workers int
		want                int
		wantErr             bool
	}{
		{"single-writer store", oneLoop{}, 0, 1000, 1, false},
		{"single-writer store, one asked", oneLoop{}, 1, 1000, 1, false},
		{"single-writer store, two asked", oneLoop{}, 2, 1000, 0, true},
		{"the store's preference", twoLoops{}, 0, 1000, 2, false},
		{"asked for more", twoLoops{}, 3, 1000, 3, false},
		{"asked for fewer", twoLoops{}, 1, 1000, 1, false},
		{"no more loops than workers", twoLoops{}, 0, 1, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := loops(Config{StoreLoops: tt.storeLoops, Workers: tt.workers}, tt.drv)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("loops = %d, %v; want %d (error: %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
