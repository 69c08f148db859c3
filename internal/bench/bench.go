// Package bench holds the scenarios behind `herald bench`. Each runs a real
// herald client on a real store and reports what it measured.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/history"
	"github.com/heraldmq/herald/store"
)

// Options are shared by every scenario.
type Options struct {
	// Store is where jobs live: "" for a fresh SQLite file in a temporary
	// directory, a file path, or a URL understood by OpenStore.
	Store string
	// Workers is the engine's global worker cap (0: scenario default).
	Workers int
	// Out receives progress lines.
	Out io.Writer
	// Logger for the engine (nil: discard).
	Logger *slog.Logger
}

// OpenStore opens the driver a --store flag names. It is a variable so the
// PostgreSQL driver can plug in without this package importing it.
var OpenStore = openSQLite

// client opens the store and a client with kind "bench" running h.
func (o Options) client(ctx context.Context, workers int, h herald.HandlerFunc) (*herald.Client, func(), error) {
	drv, cleanup, err := OpenStore(ctx, o.Store)
	if err != nil {
		return nil, nil, err
	}
	c, err := herald.New(herald.Config{Store: drv, Workers: workers, Logger: o.Logger, StatsInterval: time.Hour})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	if err := c.Register("bench", h, herald.KindConfig{}); err != nil {
		cleanup()
		return nil, nil, err
	}
	if err := c.Start(ctx); err != nil {
		cleanup()
		return nil, nil, err
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Stop(sctx)
		cleanup()
	}
	return c, stop, nil
}

func (o Options) printf(format string, args ...any) {
	if o.Out != nil {
		fmt.Fprintf(o.Out, format+"\n", args...)
	}
}

func seqOf(j *herald.Job) int64 {
	// Hand-parsed: json.Unmarshal per job would dominate a no-op benchmark.
	s := string(j.Payload)
	_, after, ok := strings.Cut(s, ":")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimRight(after, "} "), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// randomKey spreads job i over keys pseudo-randomly but deterministically
// (splitmix64), so every producer agrees on job i's key without a table of
// n keys in memory.
func randomKey(keys int) func(i int) int {
	return func(i int) int {
		z := uint64(i) + 0x9e3779b97f4a7c15 //nolint:gosec // i >= 0
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return int((z ^ (z >> 31)) % uint64(keys)) //nolint:gosec // keys > 0, result < keys
	}
}

// enqueueAll enqueues job i for i in [0,n) with key keyOf(i) in batches from several
// producers, preserving per-key order: each producer owns a disjoint set of
// keys, so per-key sequence numbers follow acknowledgement order.
func enqueueAll(ctx context.Context, c *herald.Client, rec *history.Recorder, n, batch, producers int, keyOf func(i int) int) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			seqs := map[int]int64{}
			var buf []herald.EnqueueParams
			flush := func() error {
				if len(buf) == 0 {
					return nil
				}
				res, err := c.EnqueueMany(ctx, buf)
				if err != nil {
					return err
				}
				if rec != nil {
					for i, r := range res {
						rec.Ack(history.Ack{ID: r.Job.ID, Key: r.Job.Key, Seq: seqOfParams(buf[i])})
					}
				}
				buf = buf[:0]
				return nil
			}
			for i := range n {
				k := keyOf(i)
				if k%producers != p {
					continue
				}
				seq := seqs[k]
				seqs[k]++
				buf = append(buf, herald.EnqueueParams{
					Kind: "bench", Key: "k" + strconv.Itoa(k),
					Payload: json.RawMessage(`{"seq":` + strconv.FormatInt(seq, 10) + `}`),
				})
				if len(buf) >= batch {
					if err := flush(); err != nil {
						errs <- err
						return
					}
				}
			}
			if err := flush(); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

func seqOfParams(p herald.EnqueueParams) int64 {
	return seqOf(&herald.Job{Payload: p.Payload.(json.RawMessage)})
}

// waitFor polls until cond holds or the deadline passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out waiting for jobs to finish")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// percentile returns the p-th percentile (0..100) of ds in milliseconds.
func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return float64(s[i]) / float64(time.Millisecond)
}

func keyPicker(dist string, keys int, r *rand.Rand) (func(i int) int, error) {
	switch dist {
	case "random":
		return func(int) int { return r.IntN(keys) }, nil
	case "roundrobin":
		return func(i int) int { return i % keys }, nil
	}
	return nil, fmt.Errorf("unknown distribution %q (want random or roundrobin)", dist)
}

func openSQLite(ctx context.Context, spec string) (store.Driver, func(), error) {
	dir := ""
	path := strings.TrimPrefix(spec, "sqlite:")
	if path == "" {
		var err error
		dir, err = os.MkdirTemp("", "herald-bench-")
		if err != nil {
			return nil, nil, err
		}
		path = filepath.Join(dir, "herald.db")
	}
	removeDir := func() error {
		if dir == "" {
			return nil
		}
		return os.RemoveAll(dir)
	}
	drv, err := openSQLiteFile(ctx, path)
	if err != nil {
		return nil, nil, errors.Join(err, removeDir())
	}
	return drv, func() {
		// A benchmark's result stands even if cleanup fails; say so.
		if err := errors.Join(drv.Close(), removeDir()); err != nil {
			fmt.Fprintln(os.Stderr, "herald bench: cleanup:", err)
		}
	}, nil
}
