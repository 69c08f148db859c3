package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/heraldmq/herald/internal/bench"
)

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
	cmd.PersistentFlags().StringVar(&opts.Store, "store", "", "store to use: empty for a fresh SQLite file in a temp dir, or a SQLite file path")
	cmd.PersistentFlags().IntVar(&opts.Workers, "workers", 0, "global worker slots (0: scenario default)")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print the result as one JSON object on the last line")
	var cpuProfile string
	cmd.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) of the run to this file")
	cmd.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
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
		cmd.PersistentPostRunE = func(*cobra.Command, []string) error {
			pprof.StopCPUProfile()
			return f.Close()
		}
		return nil
	}

	report := func(cmd *cobra.Command, v any) {
		if asJSON {
			fmt.Fprintln(cmd.OutOrStdout(), bench.JSON(v))
		} else {
			fmt.Fprintf(cmd.OutOrStdout(), "%+v\n", v)
		}
	}
	prep := func(cmd *cobra.Command) { opts.Out = cmd.ErrOrStderr() }

	// Each scenario has its own flag variables: shared ones would take the
	// default of whichever command registered last.
	var (
		tJobs, tKeys, batch, producers int
		samples                        int
		events, mKeys                  int
		work                           time.Duration
		dist                           string
		bJobs, bKeys                   int
	)

	throughput := &cobra.Command{
		Use:   "throughput",
		Short: "No-op jobs, durable and ordered: enqueue rate and end-to-end processing rate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			prep(cmd)
			res, err := bench.Throughput(cmd.Context(), opts, tJobs, tKeys, batch, producers)
			if err != nil {
				return err
			}
			report(cmd, res)
			return nil
		},
	}
	throughput.Flags().IntVar(&tJobs, "jobs", 200000, "jobs to run")
	throughput.Flags().IntVar(&tKeys, "keys", 1000, "distinct ordering keys (random)")
	throughput.Flags().IntVar(&batch, "batch", 1000, "jobs per EnqueueMany call")
	throughput.Flags().IntVar(&producers, "producers", 4, "concurrent producers")

	latency := &cobra.Command{
		Use:   "latency",
		Short: "Enqueue → handler start on an idle engine",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			prep(cmd)
			res, err := bench.Latency(cmd.Context(), opts, samples)
			if err != nil {
				return err
			}
			report(cmd, res)
			return nil
		},
	}
	latency.Flags().IntVar(&samples, "samples", 1000, "jobs to time, one at a time")

	makespan := &cobra.Command{
		Use:   "makespan",
		Short: "Seeds 002/003: ordered events over accounts, each taking --work",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			prep(cmd)
			res, err := bench.Makespan(cmd.Context(), opts, events, mKeys, work, dist)
			if err != nil {
				return err
			}
			report(cmd, res)
			if res.Lost+res.OrderViolations+res.Overlaps > 0 {
				return fmt.Errorf("checker found %d lost, %d order violations, %d overlaps", res.Lost, res.OrderViolations, res.Overlaps)
			}
			return nil
		},
	}
	makespan.Flags().IntVar(&events, "events", 10000, "events to enqueue")
	makespan.Flags().IntVar(&mKeys, "keys", 1000, "accounts (ordering keys)")
	makespan.Flags().DurationVar(&work, "work", time.Second, "time each event takes")
	makespan.Flags().StringVar(&dist, "dist", "random", "how events map to keys: random or roundrobin")

	backlog := &cobra.Command{
		Use:   "backlog",
		Short: "Enqueue a large backlog, then drain it; reports peak RSS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			prep(cmd)
			res, err := bench.Backlog(cmd.Context(), opts, bJobs, bKeys)
			if err != nil {
				return err
			}
			report(cmd, res)
			return nil
		},
	}
	backlog.Flags().IntVar(&bJobs, "jobs", 5000000, "jobs to enqueue before draining")
	backlog.Flags().IntVar(&bKeys, "keys", 1000000, "distinct ordering keys (random)")

	cmd.AddCommand(throughput, latency, makespan, backlog)
	return cmd
}
