package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/heraldmq/herald/internal/chaos"
)

func newChaosCmd() *cobra.Command {
	var (
		cfg    chaos.Config
		faults []string
		seed   uint64
		verb   bool
	)
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Reliability harness: run herald serve processes under faults and check the history",
		Long: `Run real herald serve processes and a webhook sink process, enqueue a
Zipf-distributed workload over the HTTP API, inject faults (kill -9, SIGTERM,
sink restarts; with a shared store also SIGSTOP beyond the lease and
PostgreSQL restarts), drain, and check the recorded history: nothing
acknowledged lost, nothing unacknowledged delivered, per-key order kept, no
same-key overlaps, every duplicate explained by a fault. A poison key must
end dead-lettered without slowing the other keys' p99 by more than 2×.

It exits non-zero when a guarantee was violated and keeps --dir (logs, sink
logs, data) for inspection. See docs/reliability.md.`,
		Example: `  herald chaos --cycles 10
  herald chaos --cycles 100 --events 200000
  herald chaos --postgres --nodes 3 --cycles 5 --lease 2s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Bin == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the herald binary: %w", err)
				}
				cfg.Bin = exe
			}
			if cmd.Flags().Changed("faults") {
				cfg.Faults = faults
			}
			cfg.Seed = seed
			level := slog.LevelInfo
			if verb {
				level = slog.LevelDebug
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := chaos.Run(ctx, cfg)
			if err == nil || errors.Is(err, chaos.ErrFailed) {
				fmt.Fprint(cmd.OutOrStdout(), res.Summary())
			}
			if err != nil && res.Dir != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "logs and data kept in %s\n", res.Dir)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Bin, "bin", "", "herald binary to run as nodes and sink (default: this executable)")
	f.StringVar(&cfg.Dir, "dir", "", "working directory for data and logs (default: a temp dir, removed on success)")
	f.StringVar(&cfg.Store, "store", "", "store passed to every node: empty for SQLite per node, or a postgres:// URL")
	f.BoolVar(&cfg.Postgres, "postgres", false, "start a private PostgreSQL (initdb/pg_ctl in --dir) and use it as the store")
	f.IntVar(&cfg.Nodes, "nodes", 0, "herald serve processes (default 1; 3 with a shared store)")
	f.IntVar(&cfg.Cycles, "cycles", 10, "fault cycles")
	f.IntVar(&cfg.Events, "events", 0, "enqueue requests over all cycles (default 500 per cycle)")
	f.IntVar(&cfg.LatencyEvents, "latency-events", 0, "requests in each latency phase, fault-free and with the poison key (default 2000; -1 skips)")
	f.Float64Var(&cfg.LatencyRate, "latency-rate", 0, "requests per second in the latency phases (default 400)")
	f.IntVar(&cfg.Concurrency, "concurrency", 0, "concurrent enqueue clients (default 16)")
	f.IntVar(&cfg.Keys, "keys", 0, "ordinary keys, Zipf-distributed (default 500)")
	f.StringSliceVar(&faults, "faults", nil, "fault kinds to draw from, repeat for weight: kill, term, stop, sink, pgrestart (default mostly kill)")
	f.IntVar(&cfg.FaultsPerCycle, "faults-per-cycle", 0, "most faults per cycle (default 2)")
	f.DurationVar(&cfg.Lease, "lease", 0, "nodes' lease (default 2s with a shared store)")
	f.Float64Var(&cfg.FailRate, "fail-rate", 0, "share of deliveries the sink answers 500 during the cycles (default 0.02)")
	f.Float64Var(&cfg.TimeoutRate, "timeout-rate", 0, "share of deliveries the sink holds until herald times out (default 0.002)")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", 0, "bound on each drain (default 2m)")
	f.Uint64Var(&seed, "seed", 0, "seed for faults and workload (default: the time)")
	f.BoolVarP(&verb, "verbose", "v", false, "log every fault")
	cmd.AddCommand(newChaosSinkCmd())
	return cmd
}

// newChaosSinkCmd is the webhook sink process the harness runs; hidden
// because only the harness starts it.
func newChaosSinkCmd() *cobra.Command {
	var (
		cfg    chaos.SinkConfig
		faults string
	)
	cmd := &cobra.Command{
		Use:    "sink",
		Short:  "Webhook sink of the chaos harness (started by herald chaos)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if faults != "" {
				if err := json.Unmarshal([]byte(faults), &cfg.Faults); err != nil {
					return fmt.Errorf("--faults: %w", err)
				}
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return chaos.RunSink(ctx, cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Listen, "listen", "127.0.0.1:0", "address to listen on")
	cmd.Flags().StringVar(&cfg.Log, "log", "", "delivery log file (appended, fsynced)")
	cmd.Flags().StringVar(&faults, "faults", "", "initial faults as JSON (the body PUT /faults takes)")
	return cmd
}
