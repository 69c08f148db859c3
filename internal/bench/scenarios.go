package bench

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/history"
	"github.com/heraldmq/herald/store/sqlite"
)

func openSQLiteFile(ctx context.Context, path string) (*sqlite.Store, error) {
	return sqlite.Open(ctx, path, sqlite.Options{})
}

// ThroughputResult is `herald bench throughput`'s JSON line.
type ThroughputResult struct {
	Scenario      string  `json:"scenario"`
	Nodes         int     `json:"nodes"`
	Jobs          int     `json:"jobs"`
	Keys          int     `json:"keys"`
	EnqueuePerS   float64 `json:"enqueue_per_s"`
	ProcessedPerS float64 `json:"processed_per_s"`
	PickupP50Ms   float64 `json:"pickup_p50_ms"`
	PickupP99Ms   float64 `json:"pickup_p99_ms"`
	// OrderViolations counts jobs that started out of their key's enqueue
	// order (or twice), Overlaps jobs that started while another job of
	// their key was running. Both must be 0: Throughput fails otherwise.
	OrderViolations int `json:"order_violations"`
	Overlaps        int `json:"overlaps"`
}

// ErrOrderBroken means a benchmark saw jobs of one key run out of order or
// at the same time.
var ErrOrderBroken = errors.New("bench: per-key order broken")

// ErrBadInput means a scenario was given counts it cannot run with.
var ErrBadInput = errors.New("bench: bad input")

// keyOrder checks, at handler start and end, that each key's jobs run one
// at a time in enqueue order (the seq in their payload, from 0).
type keyOrder struct {
	mu                  sync.Mutex
	keys                map[string]*keyRun
	violations, overlap int
}

type keyRun struct {
	next    int64
	running bool
}

func (k *keyOrder) start(key string, seq int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := k.keys[key]
	if r == nil {
		r = &keyRun{}
		k.keys[key] = r
	}
	if r.running {
		k.overlap++
	}
	if seq != r.next {
		k.violations++
	}
	r.running, r.next = true, seq+1
}

func (k *keyOrder) end(key string) {
	k.mu.Lock()
	k.keys[key].running = false
	k.mu.Unlock()
}

// Throughput enqueues jobs no-op jobs over keys (durable, ordered) while
// the engine runs them, checking that each key's jobs run one at a time in
// enqueue order. processed_per_s is jobs divided by the time from the first
// enqueue to the last completion; pickup is handler start minus the job's
// created_at.
func Throughput(ctx context.Context, o Options, jobs, keys, batch, producers int) (ThroughputResult, error) {
	res := ThroughputResult{Scenario: "throughput", Jobs: jobs, Keys: keys}
	if jobs <= 0 || keys <= 0 || batch <= 0 || producers <= 0 {
		return res, fmt.Errorf("%w: jobs, keys, batch and producers must be positive", ErrBadInput)
	}
	pickups := make([]time.Duration, jobs)
	var idx, done atomic.Int64
	var last atomic.Int64
	order := &keyOrder{keys: make(map[string]*keyRun, keys)}
	res.Nodes = max(o.Nodes, 1)
	cs, stop, err := o.clients(ctx, cmp.Or(o.Workers, 1000), func(_ context.Context, j *herald.Job) error {
		now := time.Now()
		order.start(j.Key, seqOf(j))
		if i := idx.Add(1) - 1; i < int64(len(pickups)) {
			pickups[i] = now.Sub(j.CreatedAt)
		}
		order.end(j.Key)
		done.Add(1)
		last.Store(now.UnixNano())
		return nil
	})
	if err != nil {
		return res, err
	}
	defer stop()
	start := time.Now()
	enq, err := enqueueAll(ctx, cs, nil, jobs, batch, producers, randomKey(keys))
	if err != nil {
		return res, err
	}
	res.EnqueuePerS = float64(jobs) / enq.Seconds()
	o.printf("enqueued %d jobs in %s (%.0f/s)", jobs, enq.Round(time.Millisecond), res.EnqueuePerS)
	if err := waitFor(ctx, 10*time.Minute, func() bool { return done.Load() >= int64(jobs) }); err != nil {
		return res, err
	}
	total := time.Unix(0, last.Load()).Sub(start)
	res.ProcessedPerS = float64(jobs) / total.Seconds()
	res.PickupP50Ms = percentile(pickups, 50)
	res.PickupP99Ms = percentile(pickups, 99)
	o.printf("processed %d jobs in %s end to end (%.0f/s)", jobs, total.Round(time.Millisecond), res.ProcessedPerS)
	order.mu.Lock()
	res.OrderViolations, res.Overlaps = order.violations, order.overlap
	order.mu.Unlock()
	if res.OrderViolations > 0 || res.Overlaps > 0 {
		return res, fmt.Errorf("%w: %d jobs out of order, %d overlapping", ErrOrderBroken, res.OrderViolations, res.Overlaps)
	}
	return res, nil
}

// LatencyResult is `herald bench latency`'s JSON line.
type LatencyResult struct {
	Scenario    string  `json:"scenario"`
	Nodes       int     `json:"nodes"`
	Samples     int     `json:"samples"`
	PickupP50Ms float64 `json:"pickup_p50_ms"`
	PickupP99Ms float64 `json:"pickup_p99_ms"`
}

// Latency measures enqueue call → handler start on an idle engine, one job
// at a time. With several nodes the first only enqueues (its kind is
// paused), so every pickup crosses nodes: the other engines learn of the
// job from the store's notifications.
func Latency(ctx context.Context, o Options, samples int) (LatencyResult, error) {
	res := LatencyResult{Scenario: "latency", Samples: samples, Nodes: max(o.Nodes, 1)}
	if samples <= 0 {
		return res, fmt.Errorf("%w: samples must be positive", ErrBadInput)
	}
	started := make(chan time.Time, 1)
	cs, stop, err := o.clients(ctx, cmp.Or(o.Workers, 100), func(context.Context, *herald.Job) error {
		started <- time.Now()
		return nil
	})
	if err != nil {
		return res, err
	}
	defer stop()
	c := cs[0]
	if len(cs) > 1 {
		if err := c.Pause("bench"); err != nil {
			return res, err
		}
	}
	lat := make([]time.Duration, 0, samples)
	for i := range samples {
		time.Sleep(2 * time.Millisecond) // let the engines go idle again
		t0 := time.Now()
		if _, err := c.Enqueue(ctx, herald.EnqueueParams{Kind: "bench", Key: "k" + strconv.Itoa(i%10)}); err != nil {
			return res, err
		}
		select {
		case t := <-started:
			lat = append(lat, t.Sub(t0))
		case <-time.After(10 * time.Second):
			return res, fmt.Errorf("job %d did not start within 10s", i)
		}
	}
	res.PickupP50Ms = percentile(lat, 50)
	res.PickupP99Ms = percentile(lat, 99)
	return res, nil
}

// MakespanResult is `herald bench makespan`'s JSON line.
type MakespanResult struct {
	Scenario        string  `json:"scenario"`
	Nodes           int     `json:"nodes"`
	Events          int     `json:"events"`
	Keys            int     `json:"keys"`
	WorkS           float64 `json:"work_s"`
	BoundS          float64 `json:"bound_s"`
	MakespanS       float64 `json:"makespan_s"`
	Ratio           float64 `json:"ratio"`
	Lost            int     `json:"lost"`
	OrderViolations int     `json:"order_violations"`
	Overlaps        int     `json:"overlaps"`
	Duplicates      int     `json:"duplicates"`
}

// Err reports what the history checker found wrong, if anything.
func (r MakespanResult) Err() error {
	if r.Lost+r.OrderViolations+r.Overlaps == 0 {
		return nil
	}
	return fmt.Errorf("checker found %d lost, %d order violations, %d overlaps", r.Lost, r.OrderViolations, r.Overlaps)
}

// Makespan is seeds 002/003's task: events over keys, each taking work,
// strictly ordered per key. The lower bound is the busiest key's count ×
// work; the history checker judges order, overlaps and loss.
func Makespan(ctx context.Context, o Options, events, keys int, work time.Duration, dist string) (MakespanResult, error) {
	res := MakespanResult{Scenario: "makespan", Events: events, Keys: keys, WorkS: work.Seconds()}
	if events <= 0 || keys <= 0 || work < 0 {
		return res, fmt.Errorf("%w: events and keys must be positive, work not negative", ErrBadInput)
	}
	keyOf, err := keyPicker(dist, keys, rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7)))
	if err != nil {
		return res, err
	}
	keyList := make([]int, events)
	perKey := make([]int, keys)
	for i := range keyList {
		keyList[i] = keyOf(i)
		perKey[keyList[i]]++
	}
	busiest := 0
	for _, n := range perKey {
		busiest = max(busiest, n)
	}
	res.BoundS = float64(busiest) * work.Seconds()
	rec := history.NewRecorder()
	rec.Grow(events, events)
	var done atomic.Int64
	var last atomic.Int64
	res.Nodes = max(o.Nodes, 1)
	cs, stop, err := o.clients(ctx, cmp.Or(o.Workers, max(keys, 100)), func(ctx context.Context, j *herald.Job) error {
		finish := rec.Start(j.ID, j.Key, seqOf(j), j.Attempt)
		select {
		case <-time.After(work):
		case <-ctx.Done():
			finish(history.Failed)
			return ctx.Err()
		}
		finish(history.Succeeded)
		done.Add(1)
		last.Store(time.Now().UnixNano())
		return nil
	})
	if err != nil {
		return res, err
	}
	defer stop()
	start := time.Now()
	enq, err := enqueueAll(ctx, cs, rec, events, 500, 4, func(i int) int { return keyList[i] })
	if err != nil {
		return res, err
	}
	o.printf("enqueued %d events over %d keys in %s; bound %.2fs", events, keys, enq.Round(time.Millisecond), res.BoundS)
	if err := waitFor(ctx, time.Duration(res.BoundS*3+60)*time.Second, func() bool { return done.Load() >= int64(events) }); err != nil {
		return res, err
	}
	res.MakespanS = time.Unix(0, last.Load()).Sub(start).Seconds()
	res.Ratio = res.MakespanS / res.BoundS
	rep := rec.Check(history.Options{})
	res.Lost, res.OrderViolations, res.Overlaps, res.Duplicates = rep.Lost, rep.NumOrderViolations, rep.NumOverlaps, rep.Duplicates
	o.printf("makespan %.2fs, ratio %.3f; checker: %s", res.MakespanS, res.Ratio, rep.String())
	return res, nil
}

// BacklogResult is `herald bench backlog`'s JSON line.
type BacklogResult struct {
	Scenario      string  `json:"scenario"`
	Jobs          int     `json:"jobs"`
	Keys          int     `json:"keys"`
	PeakRSSMiB    float64 `json:"peak_rss_mib"`
	EnqueuePerS   float64 `json:"enqueue_per_s"`
	ProcessedPerS float64 `json:"processed_per_s"`
}

// Backlog enqueues every job first (the kind paused), then drains them, and
// reports the process's peak resident memory.
func Backlog(ctx context.Context, o Options, jobs, keys int) (BacklogResult, error) {
	res := BacklogResult{Scenario: "backlog", Jobs: jobs, Keys: keys}
	if jobs <= 0 || keys <= 0 {
		return res, fmt.Errorf("%w: jobs and keys must be positive", ErrBadInput)
	}
	var done atomic.Int64
	c, stop, err := o.client(ctx, cmp.Or(o.Workers, 1000), func(context.Context, *herald.Job) error {
		done.Add(1)
		return nil
	})
	if err != nil {
		return res, err
	}
	defer stop()
	if err := c.Pause("bench"); err != nil {
		return res, err
	}
	enq, err := enqueueAll(ctx, []*herald.Client{c}, nil, jobs, 5000, 2, randomKey(keys))
	if err != nil {
		return res, err
	}
	res.EnqueuePerS = float64(jobs) / enq.Seconds()
	o.printf("enqueued %d jobs over %d keys in %s (%.0f/s); draining", jobs, keys, enq.Round(time.Second), res.EnqueuePerS)
	start := time.Now()
	if err := c.Resume("bench"); err != nil {
		return res, err
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	progressDone := make(chan struct{})
	defer close(progressDone)
	go func() {
		for {
			select {
			case <-tick.C:
				o.printf("  drained %d/%d, peak RSS %.0f MiB", done.Load(), jobs, peakRSSMiB())
			case <-progressDone:
				return
			}
		}
	}()
	if err := waitFor(ctx, 2*time.Hour, func() bool { return done.Load() >= int64(jobs) }); err != nil {
		return res, err
	}
	res.ProcessedPerS = float64(jobs) / time.Since(start).Seconds()
	res.PeakRSSMiB = peakRSSMiB()
	return res, nil
}

// peakRSSMiB reads the process's high-water resident set (Linux VmHWM).
func peakRSSMiB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close() //nolint:errcheck // read-only file
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				return -1
			}
			return kb / 1024
		}
	}
	return -1
}

// JSON renders v as one line.
func JSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
