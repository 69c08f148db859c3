package herald

import (
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"testing"
)

func jobsOf(keys ...string) []EnqueueParams {
	ps := make([]EnqueueParams, len(keys))
	for i, k := range keys {
		ps[i] = EnqueueParams{Kind: "k", Key: k}
	}
	return ps
}

func hashLoop(key string, loops int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(loops)) //nolint:gosec // test
}

// A key keeps the loop it first went through; a batch follows most of its
// known keys; new keys go by hash; unordered jobs take turns.
func TestKeyRoutes(t *testing.T) {
	t.Parallel()
	var r keyRoutes
	var turn atomic.Uint64
	const loops = 2
	// Find two keys the hash sends to different loops.
	a, b := "a", ""
	for i := 0; b == ""; i++ {
		if k := fmt.Sprint("b", i); hashLoop(k, loops) != hashLoop(a, loops) {
			b = k
		}
	}
	la, lb := hashLoop(a, loops), hashLoop(b, loops)
	steps := []struct {
		name string
		ps   []EnqueueParams
		want int
	}{
		{"new key: by hash", jobsOf(a), la},
		{"other new key: by hash", jobsOf(b), lb},
		{"batch led by a new key follows the known one", jobsOf("new-1", b), lb},
		{"the new key kept that loop, not its hash", jobsOf("new-1"), lb},
		{"majority of known keys", jobsOf(a, b, "new-1"), lb},
		{"a known key keeps its loop after a batch that went elsewhere", jobsOf(a), la},
	}
	for _, s := range steps {
		if got := r.route(s.ps, loops, &turn); got != s.want {
			t.Errorf("%s: loop %d, want %d", s.name, got, s.want)
		}
	}
	first := r.route(jobsOf(""), loops, &turn)
	if second := r.route(jobsOf("", ""), loops, &turn); second == first {
		t.Errorf("unordered batches went to loop %d twice in a row; want turns", first)
	}
}

// The table never holds more than maxRoutes keys.
func TestKeyRoutesBounded(t *testing.T) {
	t.Parallel()
	var r keyRoutes
	var turn atomic.Uint64
	for i := range maxRoutes + 10 {
		r.route(jobsOf(fmt.Sprint("k", i)), 2, &turn)
		if len(r.loop) > maxRoutes {
			t.Fatalf("after %d keys the table holds %d, above %d", i+1, len(r.loop), maxRoutes)
		}
	}
}
