package herald

import (
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
)

// maxRoutes bounds keyRoutes: past it the table starts over (some
// megabytes at most, whatever the backlog).
const maxRoutes = 1 << 16

// keyRoutes picks the store loop that stores an enqueue, when a client runs
// several. Any loop may store any job (the store orders each key's line),
// but a loop's claim takes the lines its own inserts just made, so a key
// whose jobs all go through one loop has its enqueues and completions in
// that loop; spread over two, they meet on the key's lock and wait. So a
// key keeps the loop it first went through, and a batch goes to the loop
// most of its known keys went through: producers that each enqueue their
// own keys end up each with a loop, as separate nodes would. A key not
// seen before goes by its hash; unordered jobs take turns.
type keyRoutes struct {
	mu   sync.Mutex
	loop map[string]int
}

// route returns the loop for the batch ps (not empty) and remembers it for
// the batch's new keys.
func (r *keyRoutes) route(ps []EnqueueParams, loops int, turn *atomic.Uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.loop == nil || len(r.loop) >= maxRoutes {
		r.loop = make(map[string]int)
	}
	votes := make([]int, loops)
	first := ""
	for _, p := range ps {
		if p.Key == "" {
			continue
		}
		if first == "" {
			first = p.Key
		}
		if l, ok := r.loop[p.Key]; ok && l < loops {
			votes[l]++
		}
	}
	if first == "" {
		return int(turn.Add(1) % uint64(loops)) //nolint:gosec // loops > 0
	}
	best := -1
	for l, v := range votes {
		if v > 0 && (best < 0 || v > votes[best]) {
			best = l
		}
	}
	if best < 0 {
		h := fnv.New32a()
		_, _ = h.Write([]byte(first))
		best = int(h.Sum32() % uint32(loops)) //nolint:gosec // loops is small and positive
	}
	for _, p := range ps {
		if _, ok := r.loop[p.Key]; !ok && p.Key != "" {
			// A copy: the caller's key may point into a large request
			// body, which the table would otherwise keep alive.
			r.loop[strings.Clone(p.Key)] = best
		}
	}
	return best
}
