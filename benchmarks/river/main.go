// Command riverbench measures River (github.com/riverqueue/river) on this
// machine the way `herald bench throughput` measures herald: no-op jobs
// inserted in batches by concurrent producers while the client works
// them, jobs divided by the time from the first insert to the last
// completion. The PostgreSQL floor cites River's numbers here;
// running both in the same minutes turns a host whose speed drifts into a
// ratio that does not.
//
// It lives in its own module so River never becomes a herald dependency.
//
//	cd benchmarks/river && go run . --database-url postgres://127.0.0.1:5432/test
//
// pair.sh runs it and herald alternately and prints their ratio.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

type noopArgs struct{}

func (noopArgs) Kind() string { return "noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	done *atomic.Int64
	last *atomic.Int64
}

func (w *noopWorker) Work(context.Context, *river.Job[noopArgs]) error {
	w.last.Store(time.Now().UnixNano())
	w.done.Add(1)
	return nil
}

// result is one run's JSON line, shaped like herald's.
type result struct {
	Scenario      string  `json:"scenario"`
	Jobs          int     `json:"jobs"`
	Workers       int     `json:"workers"`
	Insert        string  `json:"insert"`
	FetchCooldown string  `json:"fetch_cooldown"`
	EnqueuePerS   float64 `json:"enqueue_per_s"`
	ProcessedPerS float64 `json:"processed_per_s"`
}

func main() {
	var (
		url       = flag.String("database-url", "postgres://127.0.0.1:5432/test", "PostgreSQL to use; runs in a fresh schema, dropped afterwards")
		jobs      = flag.Int("jobs", 200_000, "jobs to insert and work")
		batch     = flag.Int("batch", 1000, "jobs per insert call")
		producers = flag.Int("producers", 4, "concurrent inserters")
		workers   = flag.Int("workers", 1000, "MaxWorkers of the queue")
		fast      = flag.Bool("fast", false, "insert with InsertManyFast (COPY) instead of InsertMany")
		// River's defaults (100 ms, 1 s) favour a quiet database over
		// throughput; these are the settings that gave River its best
		// numbers here (see docs/benchmarks.md).
		cooldown = flag.Duration("fetch-cooldown", 2*time.Millisecond, "River FetchCooldown")
		poll     = flag.Duration("fetch-poll-interval", 20*time.Millisecond, "River FetchPollInterval")
	)
	flag.Parse()
	if err := run(context.Background(), *url, *jobs, *batch, *producers, *workers, *fast, *cooldown, *poll); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url string, jobs, batch, producers, workers int, fast bool, cooldown, poll time.Duration) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	schema := fmt.Sprintf("riverbench_%d", time.Now().UnixNano())
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return err
	}
	defer func() {
		if _, err := pool.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			log.Printf("drop schema %s: %v", schema, err)
		}
	}()
	driver := riverpgxv5.New(pool)
	m, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema})
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	var done, last atomic.Int64
	ws := river.NewWorkers()
	river.AddWorker(ws, &noopWorker{done: &done, last: &last})
	client, err := river.NewClient(driver, &river.Config{
		Schema:            schema,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: workers}},
		Workers:           ws,
		FetchCooldown:     cooldown,
		FetchPollInterval: poll,
	})
	if err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := client.Stop(stopCtx); err != nil {
			log.Printf("stop: %v", err)
		}
	}()

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			n := jobs / producers
			if p < jobs%producers {
				n++
			}
			params := make([]river.InsertManyParams, 0, batch)
			for n > 0 {
				params = params[:0]
				for range min(batch, n) {
					params = append(params, river.InsertManyParams{Args: noopArgs{}})
				}
				n -= len(params)
				var err error
				if fast {
					_, err = client.InsertManyFast(ctx, params)
				} else {
					_, err = client.InsertMany(ctx, params)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(func() (all []error) {
		for err := range errs {
			all = append(all, err)
		}
		return all
	}()...); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	enq := time.Since(start)
	deadline := time.Now().Add(10 * time.Minute)
	for done.Load() < int64(jobs) {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d jobs worked after 10 minutes", done.Load(), jobs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	total := time.Unix(0, last.Load()).Sub(start)
	insert := "InsertMany"
	if fast {
		insert = "InsertManyFast"
	}
	return json.NewEncoder(os.Stdout).Encode(result{
		Scenario: "throughput", Jobs: jobs, Workers: workers, Insert: insert, FetchCooldown: cooldown.String(),
		EnqueuePerS:   float64(jobs) / enq.Seconds(),
		ProcessedPerS: float64(jobs) / total.Seconds(),
	})
}
