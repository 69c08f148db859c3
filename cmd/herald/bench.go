package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/heraldmq/herald/internal/bench"
	"github.com/heraldmq/herald/internal/config"
	"github.com/heraldmq/herald/internal/gctune"
)

// chainPostRun runs next after prev (if any), keeping both errors.
func chainPostRun(prev func(*cobra.Command, []string) error, next func() error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		var err error
		if prev != nil {
			err = prev(cmd, args)
		}
		return errors.Join(err, next())
	}
}

func newBenchCmd() *cobra.Command {
	var (
		opts   bench.Options
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run a benchmark scenario against a real store",
		Long: `Run a benchmark scenario against a real store.

Each scenario prints progress, then a summary. With --json the last line of
output is one JSON object with the scenario's results.`,
	}
	cmd.PersistentFlags().StringVar(&opts.Store, "store", "", "store to use: empty for a fresh SQLite file in a temp dir, a SQLite file path, or a postgres:// URL (runs in a fresh schema, dropped afterwards)")
	cmd.PersistentFlags().IntVar(&opts.Nodes, "nodes", 1, "engines sharing the store, each with its own connections (PostgreSQL only)")
	cmd.PersistentFlags().IntVar(&opts.Workers, "workers", 0, "global worker slots (0: scenario default)")
	cmd.PersistentFlags().IntVar(&opts.Loops, "loops", 0, "store loops per engine (0: the store's preference, 2 on PostgreSQL)")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print the result as one JSON object on the last line")
	var cpuProfile, memProfile, logLevel string
	var gcHeadroom int
	cmd.PersistentFlags().IntVar(&gcHeadroom, "gc-headroom-mib", config.Default().GCHeadroomMiB, "least allocation between garbage collections while the live heap is small, as herald serve's gc_headroom_mib (0: Go's default GOGC)")
	cmd.PersistentFlags().StringVar(&memProfile, "memprofile", "", "write an allocation profile (pprof) of the run to this file")
	cmd.PersistentFlags().StringVar(&logLevel, "log-level", "", "log the engine to stderr at this level (debug shows every store cycle); empty: no engine log")
	cmd.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) of the run to this file")
	cmd.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if gcHeadroom < 0 {
			return fmt.Errorf("--gc-headroom-mib: must be 0 (off) or more, got %d", gcHeadroom)
		}
		tuner := gctune.Start(int64(gcHeadroom) << 20)
		cmd.PersistentPostRunE = chainPostRun(cmd.PersistentPostRunE, func() error { tuner.Stop(); return nil })
		if logLevel != "" {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			opts.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
		}
		if memProfile != "" {
			runtime.MemProfileRate = 64 << 10
			cmd.PersistentPostRunE = chainPostRun(cmd.PersistentPostRunE, func() error {
				f, err := os.Create(memProfile)
				if err != nil {
					return err
				}
				return errors.Join(pprof.Lookup("allocs").WriteTo(f, 0), f.Close())
			})
		}
		if cpuProfile == "" {
			return nil
		}
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return errors.Join(err, f.Close())
		}
		cmd.PersistentPostRunE = chainPostRun(cmd.PersistentPostRunE, func() error {
			pprof.StopCPUProfile()
			return f.Close()
		})
		return nil
	}

	// scenario builds one subcommand: run measures, the result is printed,
	// and a result that judges itself (Err) decides the exit status.
	scenario := func(use, short string, run func(ctx context.Context) (any, error)) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				opts.Out = cmd.ErrOrStderr()
				res, err := run(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					fmt.Fprintln(cmd.OutOrStdout(), bench.JSON(res))
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "%+v\n", res)
				}
				if judged, ok := res.(interface{ Err() error }); ok {
					return judged.Err()
				}
				return nil
			},
		}
	}

	// Each scenario has its own flag variables: shared ones would take the
	// default of whichever command registered last.
	var (
		tJobs, tKeys, batch, producers int
		samples                        int
		events, mKeys                  int
		work                           time.Duration
		dist                           string
		bJobs, bKeys                   int
		hRequests, hConns, hBatch      int
		eMessages, eConns              int
		eSMTP, eSource                 string
	)

	throughput := scenario("throughput", "No-op jobs, durable and ordered: enqueue rate and end-to-end processing rate",
		func(ctx context.Context) (any, error) {
			return bench.Throughput(ctx, opts, tJobs, tKeys, batch, producers)
		})
	throughput.Flags().IntVar(&tJobs, "jobs", 200000, "jobs to run")
	throughput.Flags().IntVar(&tKeys, "keys", 1000, "distinct ordering keys (random)")
	throughput.Flags().IntVar(&batch, "batch", 1000, "jobs per EnqueueMany call")
	throughput.Flags().IntVar(&producers, "producers", 4, "concurrent producers")

	latency := scenario("latency", "Enqueue → handler start on an idle engine",
		func(ctx context.Context) (any, error) { return bench.Latency(ctx, opts, samples) })
	latency.Flags().IntVar(&samples, "samples", 1000, "jobs to time, one at a time")

	makespan := scenario("makespan", "Seeds 002/003: ordered events over accounts, each taking --work",
		func(ctx context.Context) (any, error) { return bench.Makespan(ctx, opts, events, mKeys, work, dist) })
	makespan.Flags().IntVar(&events, "events", 10000, "events to enqueue")
	makespan.Flags().IntVar(&mKeys, "keys", 1000, "accounts (ordering keys)")
	makespan.Flags().DurationVar(&work, "work", time.Second, "time each event takes")
	makespan.Flags().StringVar(&dist, "dist", "random", "how events map to keys: random or roundrobin")

	backlog := scenario("backlog", "Enqueue a large backlog, then drain it; reports peak RSS",
		func(ctx context.Context) (any, error) { return bench.Backlog(ctx, opts, bJobs, bKeys) })
	backlog.Flags().IntVar(&bJobs, "jobs", 5000000, "jobs to enqueue before draining")
	backlog.Flags().IntVar(&bKeys, "keys", 1000000, "distinct ordering keys (random)")

	httpLoad := scenario("http", "POST /v1/jobs (or /v1/jobs/batch) over loopback: durable requests/s and latency",
		func(ctx context.Context) (any, error) { return bench.HTTP(ctx, opts, hRequests, hConns, hBatch) })
	httpLoad.Flags().IntVar(&hRequests, "requests", 100000, "requests to send")
	httpLoad.Flags().IntVar(&hConns, "conns", 64, "keep-alive connections")
	httpLoad.Flags().IntVar(&hBatch, "batch", 1, "jobs per request (above 1: POST /v1/jobs/batch)")

	emailLoad := scenario("email", "Email jobs: durable enqueue → delivered over pooled SMTP connections",
		func(ctx context.Context) (any, error) {
			src := eSource
			if src == "auto" {
				// Compare with smtp-source when it is installed (Debian: postfix).
				src, _ = exec.LookPath("smtp-source")
			}
			return bench.Email(ctx, opts, eSMTP, eMessages, eConns, src)
		})
	emailLoad.Flags().StringVar(&eSMTP, "smtp", "", "SMTP sink host:port (empty: an in-process go-smtp sink)")
	emailLoad.Flags().IntVar(&eMessages, "messages", 20000, "messages to send, each to its own recipient")
	emailLoad.Flags().IntVar(&eConns, "conns", 20, "SMTP connections (the pool size)")
	emailLoad.Flags().StringVar(&eSource, "smtp-source", "auto", `postfix smtp-source to measure the sink's raw rate with first ("auto": if in PATH; "": skip)`)

	cmd.AddCommand(throughput, latency, makespan, backlog, httpLoad, emailLoad)
	return cmd
}
