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
	"github.com/heraldmq/herald/store/postgres"
)

// Options are shared by every scenario.
type Options struct {
	// Store is where jobs live: "" for a fresh SQLite file in a temporary
	// directory, a SQLite file path, or a postgres:// URL (a fresh schema
	// is created in that database and dropped afterwards).
	Store string
	// Workers is each engine's global worker cap (0: scenario default).
	Workers int
	// Nodes is how many engines share the store, each with its own
	// connections, as separate processes would (PostgreSQL only).
	// Defaults to 1.
	Nodes int
	// Loops is each client's herald.Config.StoreLoops (0: the store's
	// preference).
	Loops int
	// Out receives progress lines.
	Out io.Writer
	// Logger for the engine (nil: discard).
	Logger *slog.Logger
}

// client opens the store and a client with kind "bench" running h.
func (o Options) client(ctx context.Context, workers int, h herald.HandlerFunc) (*herald.Client, func(), error) {
	single := o
	single.Nodes = 1
	cs, stop, err := single.clients(ctx, workers, h)
	if err != nil {
		return nil, nil, err
	}
	return cs[0], stop, nil
}

// clients opens o.Nodes stores on one database and a started client with
// kind "bench" running h on each.
func (o Options) clients(ctx context.Context, workers int, h herald.HandlerFunc) ([]*herald.Client, func(), error) {
	nodes := max(o.Nodes, 1)
	drvs, cleanup, err := openStores(ctx, o.Store, nodes)
	if err != nil {
		return nil, nil, err
	}
	var cs []*herald.Client
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, c := range cs {
			_ = c.Stop(sctx)
		}
		cleanup()
	}
	for i, drv := range drvs {
		c, err := herald.New(herald.Config{Store: drv, Workers: workers, StoreLoops: o.Loops, Logger: o.Logger, StatsInterval: time.Hour,
			NodeName: fmt.Sprintf("bench-%d", i+1)})
		if err == nil {
			err = c.Register("bench", h, herald.KindConfig{})
		}
		if err == nil {
			err = c.Start(ctx)
		}
		if err != nil {
			stop()
			return nil, nil, err
		}
		cs = append(cs, c)
	}
	return cs, stop, nil
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
// keys, so per-key sequence numbers follow acknowledgement order. Producer
// p enqueues through cs[p % len(cs)], spreading the load over the nodes.
func enqueueAll(ctx context.Context, cs []*herald.Client, rec *history.Recorder, n, batch, producers int, keyOf func(i int) int) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		c := cs[p%len(cs)]
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

// openStores opens n drivers on the store spec names. A PostgreSQL URL
// gets a fresh schema, dropped by the cleanup function; SQLite (one
// process per file) supports one node.
func openStores(ctx context.Context, spec string, n int) ([]store.Driver, func(), error) {
	if postgres.IsURL(spec) {
		return openPostgres(ctx, spec, n)
	}
	if n != 1 {
		return nil, nil, fmt.Errorf("%d nodes: SQLite serves one process; use a postgres:// store", n)
	}
	drv, cleanup, err := openSQLite(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	return []store.Driver{drv}, cleanup, nil
}

func openPostgres(ctx context.Context, spec string, n int) ([]store.Driver, func(), error) {
	schema := fmt.Sprintf("herald_bench_%d", time.Now().UnixNano())
	var drvs []*postgres.Store
	cleanup := func() {
		var errs []error
		for _, d := range drvs {
			errs = append(errs, d.Close())
		}
		if len(drvs) > 0 {
			dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			last, err := postgres.Open(dctx, spec, postgres.Options{Schema: schema})
			if err == nil {
				err = errors.Join(last.DropSchema(dctx), last.Close())
			}
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			fmt.Fprintln(os.Stderr, "herald bench: cleanup:", err)
		}
	}
	out := make([]store.Driver, 0, n)
	for range n {
		d, err := postgres.Open(ctx, spec, postgres.Options{Schema: schema})
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		drvs = append(drvs, d)
		out = append(out, d)
	}
	return out, cleanup, nil
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
