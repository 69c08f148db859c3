// Package chaos is herald's reliability harness: it runs real `herald
// serve` processes and a webhook sink process, pushes a workload through the
// HTTP API while it injects faults (kill -9, SIGTERM, SIGSTOP beyond the
// lease, sink restarts, PostgreSQL restarts), drains, and judges the whole
// history with internal/history: nothing acknowledged lost, nothing
// unacknowledged delivered, per-key order kept, no same-key overlap, and
// every duplicate explained by a fault.
//
// It also measures what a poison key (a key whose jobs always fail) costs
// the other keys: their p99 enqueue-to-delivery latency with the poison key
// against a fault-free run of the same workload.
//
// `herald chaos` runs it from the command line; the package's tests run
// it in CI on SQLite and on a private multi-node PostgreSQL.
package chaos

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/heraldmq/herald/internal/history"
	"github.com/heraldmq/herald/store"
)

// Fault kinds, as Config.Faults and Result.Faults name them.
const (
	FaultKill      = "kill"      // SIGKILL a node, restart it
	FaultTerm      = "term"      // SIGTERM a node (graceful stop), restart it
	FaultStop      = "stop"      // SIGSTOP a node beyond its lease, then SIGCONT (multi-node)
	FaultSink      = "sink"      // kill -9 the webhook sink, restart it
	FaultPGRestart = "pgrestart" // crash-restart the private PostgreSQL (multi-node)
)

// ErrFailed means the run finished but a guarantee did not hold; the
// Result says which.
var ErrFailed = errors.New("chaos: guarantees violated")

// poisonMaxAttempts is the poison jobs' max_attempts: each is dead-lettered
// after that many failed attempts.
const poisonMaxAttempts = 3

// Config configures Run. Zero fields take the documented defaults.
type Config struct {
	// Bin is the herald binary to run (serve and the hidden `chaos sink`).
	// Required.
	Bin string
	// Dir holds data directories, configs and logs. Defaults to a new
	// temporary directory, removed after a successful run.
	Dir string
	// Store is passed to every node as --store: "" is SQLite in the node's
	// data directory (one node only); a postgres:// URL is shared by all
	// nodes. Defaults to "".
	Store string
	// Postgres starts a private PostgreSQL (initdb/pg_ctl in Dir, never the
	// machine's server) and uses it as Store. Defaults to false.
	Postgres bool
	// Nodes is the number of herald serve processes. More than one needs a
	// shared store. Defaults to 1, or 3 with Postgres.
	Nodes int
	// Cycles is the number of fault cycles. Defaults to 10.
	Cycles int
	// Events is the number of enqueue requests sent during the fault
	// cycles, spread evenly over them. Defaults to 500 per cycle.
	Events int
	// LatencyEvents is the number of requests in each of the two latency
	// phases (fault-free, and with the poison key) that run before the
	// cycles, split over latencyRounds alternations; negative skips them.
	// Defaults to 2000.
	LatencyEvents int
	// LatencyRate is the request rate (per second) of the latency phases:
	// an open loop below saturation, so that the p99 measures the queue,
	// not the backlog a closed loop builds on the hottest keys.
	// Defaults to 400.
	LatencyRate float64
	// Concurrency is the number of concurrent enqueue clients.
	// Defaults to 16.
	Concurrency int
	// Keys is the number of ordinary keys; they are drawn from a Zipf
	// distribution with exponent ZipfS (> 1) and offset ZipfV (≥ 1): a few
	// hot keys and a long tail. Defaults to 500, 1.1 and 5.
	Keys  int
	ZipfS float64
	ZipfV float64
	// Faults are the fault kinds dealt to the cycles from a shuffled deck,
	// with repetition for weight: every len(Faults) faults injected include
	// each listed kind. Kinds a single node cannot meaningfully take (stop,
	// pgrestart) are dropped without a shared store. Defaults to mostly
	// kills, with term and sink restarts, plus stop and pgrestart when
	// multi-node.
	Faults []string
	// FaultsPerCycle is the most faults one cycle injects; each cycle
	// draws 1..FaultsPerCycle. Defaults to 2.
	FaultsPerCycle int
	// Lease is the nodes' lease; a stopped node is held frozen
	// for Lease plus a second. Defaults to 2s with a shared store, else 0
	// (herald's default; one SQLite node needs no lease to recover).
	Lease time.Duration
	// FailRate and TimeoutRate are the sink's random 500s and held
	// requests during the cycles. Default to 0.02 and 0.002.
	FailRate    float64
	TimeoutRate float64
	// SlowDelay is the slow key's delivery time. Defaults to 20ms.
	SlowDelay time.Duration
	// WebhookTimeout bounds a delivery (herald's webhook timeout); a held
	// request fails after it. Defaults to 1s.
	WebhookTimeout time.Duration
	// DrainTimeout bounds the final drain. Defaults to 2m.
	DrainTimeout time.Duration
	// Seed makes fault choice and the workload repeatable. Defaults to
	// the time.
	Seed uint64
	// Logger receives progress. Defaults to discarding it.
	Logger *slog.Logger
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	shared := c.Postgres || strings.HasPrefix(c.Store, "postgres")
	if shared {
		c.Nodes = cmp.Or(c.Nodes, 3)
		c.Lease = cmp.Or(c.Lease, 2*time.Second)
	}
	c.Nodes = cmp.Or(c.Nodes, 1)
	c.Cycles = cmp.Or(c.Cycles, 10)
	c.Events = cmp.Or(c.Events, 500*c.Cycles)
	c.LatencyEvents = cmp.Or(c.LatencyEvents, 2000)
	c.LatencyRate = cmp.Or(c.LatencyRate, 400)
	c.Concurrency = cmp.Or(c.Concurrency, 16)
	c.Keys = cmp.Or(c.Keys, 500)
	c.ZipfS = cmp.Or(c.ZipfS, 1.1)
	c.ZipfV = cmp.Or(c.ZipfV, 5)
	if c.Faults == nil {
		c.Faults = []string{FaultKill, FaultKill, FaultKill, FaultKill, FaultTerm, FaultSink}
		if shared {
			c.Faults = append(c.Faults, FaultStop, FaultPGRestart)
		}
	}
	if !shared {
		c.Faults = slices.DeleteFunc(slices.Clone(c.Faults), func(f string) bool { return f == FaultStop || f == FaultPGRestart })
	}
	c.FaultsPerCycle = cmp.Or(c.FaultsPerCycle, 2)
	c.FailRate = cmp.Or(c.FailRate, 0.02)
	c.TimeoutRate = cmp.Or(c.TimeoutRate, 0.002)
	c.SlowDelay = cmp.Or(c.SlowDelay, 20*time.Millisecond)
	c.WebhookTimeout = cmp.Or(c.WebhookTimeout, time.Second)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, 2*time.Minute)
	if c.Seed == 0 {
		c.Seed = uint64(time.Now().UnixNano())
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Bin == "":
		return errors.New("chaos: config: Bin is required")
	case c.Nodes > 1 && c.Store == "" && !c.Postgres:
		return fmt.Errorf("chaos: config: Nodes = %d needs a shared store (Store postgres://... or Postgres)", c.Nodes)
	case c.Cycles < 0 || c.Events < 0 || c.Concurrency < 1 || c.Keys < 2:
		return errors.New("chaos: config: Cycles and Events must not be negative, Concurrency must be ≥ 1 and Keys ≥ 2")
	case c.ZipfS <= 1 || c.ZipfV < 1:
		return fmt.Errorf("chaos: config: ZipfS must be > 1 and ZipfV ≥ 1, got %g and %g", c.ZipfS, c.ZipfV)
	case c.FailRate < 0 || c.TimeoutRate < 0 || c.FailRate+c.TimeoutRate >= 0.5:
		return errors.New("chaos: config: FailRate and TimeoutRate must be ≥ 0 and add up to less than 0.5")
	}
	for _, f := range c.Faults {
		if !slices.Contains([]string{FaultKill, FaultTerm, FaultStop, FaultSink, FaultPGRestart}, f) {
			return fmt.Errorf("chaos: config: unknown fault %q (kill, term, stop, sink, pgrestart)", f)
		}
	}
	if c.Cycles > 0 && len(c.Faults) == 0 {
		return errors.New("chaos: config: Faults is empty")
	}
	return nil
}

// Latency summarizes enqueue-to-delivery latency: from sending the
// request to the end of the job's first successful delivery.
type Latency struct {
	Jobs     int
	P50, P99 time.Duration
}

func (l Latency) String() string {
	return fmt.Sprintf("p50=%s p99=%s over %d jobs", l.P50.Round(time.Microsecond), l.P99.Round(time.Microsecond), l.Jobs)
}

// Result is what a run observed.
type Result struct {
	Config  Config // with defaults applied
	Dir     string
	Elapsed time.Duration

	// Requests: sent, acknowledged (2xx), refused (connection refused: the
	// node was down), rejected (an answer saying nothing was stored) and
	// indeterminate (the answer was lost).
	Sent, Acked, Refused, Rejected, Indeterminate int
	RejectCodes                                   map[string]int
	// AmbiguousUnavailable counts 503 commit_unknown answers (the
	// connection to PostgreSQL broke during COMMIT: indeterminate),
	// AmbiguousStored those of them whose job was in fact stored and
	// delivered.
	AmbiguousUnavailable, AmbiguousStored int

	Cycles int
	Faults map[string]int // injected, by kind
	// DrainErr is set when the final drain timed out: jobs were stuck.
	// The history is judged anyway.
	DrainErr error
	// UnplannedExits counts nodes found dead that no fault killed: each is
	// worth reading in its log (a crash is a bug even if nothing was lost).
	UnplannedExits int
	// StaleAttempts counts deliveries that reached the sink after a
	// higher attempt of the same job had: a node frozen between its last
	// lease check and the send (docs/webhooks.md, "Fencing stale
	// attempts"). A fencing receiver refuses them, so the history is
	// judged without them.
	StaleAttempts int
	// QueueFailedSuccesses counts deliveries the sink logged as successes
	// that herald recorded as failed attempts: the sink's answer never
	// reached herald, because it came after herald's webhook timeout (on a
	// loaded machine the sink log's fsync alone can take that long) or the
	// sink was killed before sending it. The reruns they cause are
	// duplicates herald had to make; the checker counts them as recovered.
	QueueFailedSuccesses int

	// Report is the history checker's verdict over every phase.
	Report history.Report
	// DuplicateRate is Report.Duplicates over the acknowledged jobs.
	DuplicateRate float64

	// PoisonJobs were acknowledged on the poison key; PoisonDeadLettered of
	// them are, by herald's own account after the drain, discarded.
	// PoisonOverRun of them reached the receiver with an attempt number
	// above their max_attempts (an attempt cut short by a crash may run
	// again under its number, and attempts made while the sink was down
	// never reach it, so the count of deliveries proves nothing; the
	// numbers do).
	PoisonJobs, PoisonDeadLettered, PoisonOverRun int

	// Baseline and WithPoison are the ordinary keys' latencies in the
	// fault-free phases and in the phases with the poison key.
	Baseline, WithPoison Latency
	// RoundRatios are the p99 ratios (with poison over fault-free) of each
	// alternation round; a difference under 50ms counts as at most 1.
	RoundRatios []float64
}

// LatencyRatio is WithPoison.P99 over Baseline.P99 (0 without phases).
func (r Result) LatencyRatio() float64 { return ratioOf(r.Baseline, r.WithPoison) }

func ratioOf(base, with Latency) float64 {
	if base.P99 <= 0 {
		return 0
	}
	// Under the floor the difference is noise: call it even.
	if with.P99-base.P99 <= latencyFloor {
		return min(1, float64(with.P99)/float64(base.P99))
	}
	return float64(with.P99) / float64(base.P99)
}

// latencyRounds is how many times the latency phases alternate.
const latencyRounds = 3

// parsePhase splits a latency phase label ("baseline/1") into its phase
// and round; ok is false for other labels (the fault cycles).
func parsePhase(label string) (phase string, round int, ok bool) {
	phase, r, found := strings.Cut(label, "/")
	if !found || (phase != "baseline" && phase != "poison") {
		return "", 0, false
	}
	n, err := strconv.Atoi(r)
	if err != nil || n < 0 || n >= latencyRounds {
		return "", 0, false
	}
	return phase, n, true
}

// latencyFloor keeps the 2× rule from judging noise: a p99 within this of
// the baseline passes whatever the ratio.
const latencyFloor = 50 * time.Millisecond

// Err returns nil if every guarantee held, else an error matching
// ErrFailed that says which did not.
func (r Result) Err() error {
	var errs []error
	if r.DrainErr != nil {
		errs = append(errs, r.DrainErr)
	}
	if err := r.Report.Err(); err != nil {
		errs = append(errs, err)
	}
	if r.PoisonDeadLettered != r.PoisonJobs {
		errs = append(errs, fmt.Errorf("%d of %d poison jobs discarded", r.PoisonDeadLettered, r.PoisonJobs))
	}
	if r.PoisonOverRun > 0 {
		errs = append(errs, fmt.Errorf("%d poison jobs were delivered with an attempt number above max_attempts %d", r.PoisonOverRun, poisonMaxAttempts))
	}
	// A poison key that slows the other keys does so in every round; one
	// round over 2× on a shared machine is noise.
	if r.Baseline.Jobs > 0 && len(r.RoundRatios) > 0 && !slices.ContainsFunc(r.RoundRatios, func(x float64) bool { return x <= 2 }) {
		errs = append(errs, fmt.Errorf("p99 latency with the poison key %s is more than 2× the fault-free %s in every round (ratios %.2f)",
			r.WithPoison.P99, r.Baseline.P99, r.RoundRatios))
	}
	if r.Acked == 0 {
		errs = append(errs, errors.New("nothing was acknowledged"))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrFailed, errors.Join(errs...))
}

// Summary is a multi-line human-readable account of the run.
func (r Result) Summary() string {
	var b strings.Builder
	storeName := "sqlite"
	if r.Config.Postgres || r.Config.Store != "" {
		storeName = "postgres"
	}
	fmt.Fprintf(&b, "store=%s nodes=%d cycles=%d seed=%d elapsed=%s\n", storeName, r.Config.Nodes, r.Cycles, r.Config.Seed, r.Elapsed.Round(time.Millisecond))
	kinds := make([]string, 0, len(r.Faults))
	for k, n := range r.Faults {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	slices.Sort(kinds)
	fmt.Fprintf(&b, "faults: %s\n", strings.Join(kinds, " "))
	if r.UnplannedExits > 0 {
		fmt.Fprintf(&b, "WARNING: %d node exits no fault caused (see the node logs)\n", r.UnplannedExits)
	}
	if r.StaleAttempts > 0 {
		fmt.Fprintf(&b, "stale attempts fenced (a frozen node's sends after its job ran again): %d\n", r.StaleAttempts)
	}
	if r.QueueFailedSuccesses > 0 {
		fmt.Fprintf(&b, "successes herald recorded as failed (the answer did not reach it: webhook timeout, or the sink died answering): %d\n", r.QueueFailedSuccesses)
	}
	fmt.Fprintf(&b, "requests: sent=%d acked=%d refused=%d rejected=%d indeterminate=%d\n", r.Sent, r.Acked, r.Refused, r.Rejected, r.Indeterminate)
	if len(r.RejectCodes) > 0 {
		codes := make([]string, 0, len(r.RejectCodes))
		for c, n := range r.RejectCodes {
			codes = append(codes, fmt.Sprintf("%s: %d", c, n))
		}
		slices.Sort(codes)
		fmt.Fprintf(&b, "rejections: %s\n", strings.Join(codes, ", "))
	}
	if r.AmbiguousUnavailable > 0 {
		fmt.Fprintf(&b, "503 commit_unknown (indeterminate): %d, of which stored and delivered: %d\n", r.AmbiguousUnavailable, r.AmbiguousStored)
	}
	fmt.Fprintf(&b, "history: %s\n", r.Report)
	fmt.Fprintf(&b, "duplicate rate: %.3f%% (%d recovered, %d unexplained)\n", 100*r.DuplicateRate, r.Report.RecoveredDuplicates, r.Report.UnexplainedDuplicates)
	fmt.Fprintf(&b, "poison: %d jobs, %d discarded, %d delivered past max_attempts=%d\n", r.PoisonJobs, r.PoisonDeadLettered, r.PoisonOverRun, poisonMaxAttempts)
	if r.Baseline.Jobs > 0 {
		fmt.Fprintf(&b, "latency fault-free: %s\nlatency with poison key: %s (p99 ratio %.2f; per round %.2f)\n", r.Baseline, r.WithPoison, r.LatencyRatio(), r.RoundRatios)
	}
	if err := r.Err(); err != nil {
		fmt.Fprintf(&b, "FAILED: %v\n", err)
	} else {
		b.WriteString("OK: nothing lost, nothing unexpected, order kept, no overlaps, every duplicate explained\n")
	}
	return b.String()
}

// harness is one run's state.
type harness struct {
	cfg   Config
	log   *slog.Logger
	rnd   *rand.Rand
	dir   string
	nodes []*process
	// confirmedDead: poison uids herald reports discarded after the drain.
	confirmedDead map[int64]bool
	// queueFailed: attempts the sink logged as successes that herald
	// recorded as failed (see queueFailures).
	queueFailed map[history.AttemptRef]bool
	sink        *process
	sinkLogs    []sinkLog
	pg          *postgres
	faults      []history.Fault
	// faultKinds[i] is the kind of faults[i].
	faultKinds []string
	sinkFaults Faults   // the sink's current faults
	deck       []string // faults still to deal (see drawFault)
	unplanned  int      // node exits the harness did not cause
	counts     map[string]int
	wl         *workload
}

// Run runs the harness. The error is ErrFailed (with the Result filled
// in) when a guarantee was violated, another error when the run itself
// could not be carried out.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	began := time.Now()
	h := &harness{cfg: cfg, log: cfg.Logger, counts: map[string]int{},
		rnd: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed+1))} //nolint:gosec // fault choice
	removeDir := false
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "herald-chaos-")
		if err != nil {
			return Result{}, err
		}
		cfg.Dir, removeDir = d, true
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return Result{}, err
	}
	h.dir = cfg.Dir
	defer h.cleanup()

	res, err := h.run(ctx)
	res.Config, res.Dir, res.Elapsed = cfg, cfg.Dir, time.Since(began)
	if err != nil {
		return res, fmt.Errorf("chaos: %w (logs in %s)", err, cfg.Dir)
	}
	err = res.Err()
	if err == nil && removeDir {
		h.cleanup()
		_ = os.RemoveAll(cfg.Dir)
	}
	return res, err
}

func (h *harness) run(ctx context.Context) (Result, error) {
	cfg := h.cfg
	if cfg.Postgres {
		pg, err := newPostgres(ctx)
		if err != nil {
			return Result{}, err
		}
		h.pg = pg
		h.log.Info("private PostgreSQL", "dir", pg.base, "log", pg.logf)
		if err := pg.start(ctx); err != nil {
			return Result{}, err
		}
		h.cfg.Store = pg.URL()
		h.log.Info("private PostgreSQL started", "url", pg.URL())
	}
	sinkAddr, err := freeAddr(ctx)
	if err != nil {
		return Result{}, err
	}
	h.sink = &process{name: "sink", addr: sinkAddr, bin: cfg.Bin, logf: filepath.Join(h.dir, "sink.out")}
	if err := h.startSink(ctx); err != nil {
		return Result{}, err
	}
	for i := range cfg.Nodes {
		n, err := h.newNode(ctx, i)
		if err != nil {
			return Result{}, err
		}
		h.nodes = append(h.nodes, n)
		if err := n.start(ctx, 30*time.Second); err != nil {
			return Result{}, err
		}
	}
	h.wl = newWorkload(h.nodes, cfg.Keys, cfg.ZipfS, cfg.ZipfV, cfg.Seed, "chaos")
	defer h.wl.client.CloseIdleConnections()

	var res Result
	// Latency phases: no process faults and no random sink failures, so
	// the only difference between them is the poison key. They alternate
	// for latencyRounds rounds (baseline, poison, baseline, poison, ...)
	// so that a slow spell of a shared machine does not land on one only.
	if cfg.LatencyEvents > 0 {
		for round := range latencyRounds {
			for _, withPoison := range []bool{false, true} {
				f, phase := Faults{SlowKey: slowKey, SlowDelay: cfg.SlowDelay}, "baseline"
				if withPoison {
					f.PoisonKey, phase = poisonKey, "poison"
				}
				if err := h.setSinkFaults(ctx, f); err != nil {
					return res, err
				}
				h.wl.poison.Store(withPoison)
				h.log.Info("latency phase", "phase", phase, "round", round+1, "events", cfg.LatencyEvents/latencyRounds)
				h.wl.run(ctx, int64(cfg.LatencyEvents/latencyRounds), cfg.Concurrency, cfg.LatencyRate, fmt.Sprintf("%s/%d", phase, round))
				if err := h.drain(ctx); err != nil {
					return res, err
				}
			}
		}
	}

	// Fault cycles.
	h.wl.poison.Store(true)
	chaosFaults := Faults{PoisonKey: poisonKey, SlowKey: slowKey, SlowDelay: cfg.SlowDelay, FailRate: cfg.FailRate,
		TimeoutRate: cfg.TimeoutRate, TimeoutHold: cfg.WebhookTimeout + 100*time.Millisecond}
	if err := h.setSinkFaults(ctx, chaosFaults); err != nil {
		return res, err
	}
	perCycle := int64(0)
	if cfg.Cycles > 0 {
		perCycle = int64(cfg.Events / cfg.Cycles)
	}
	for c := range cfg.Cycles {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := h.cycle(ctx, c, perCycle); err != nil {
			return res, fmt.Errorf("cycle %d: %w", c+1, err)
		}
		res.Cycles++
	}

	// Final drain: everything up, no random failures (the poison key
	// still fails: its jobs must end dead-lettered).
	if err := h.ensureUp(ctx); err != nil {
		return res, err
	}
	if err := h.setSinkFaults(ctx, Faults{PoisonKey: poisonKey, SlowKey: slowKey, SlowDelay: cfg.SlowDelay}); err != nil {
		return res, err
	}
	h.log.Info("final drain")
	if err := h.drain(ctx); err != nil {
		if ctx.Err() != nil {
			return res, err
		}
		// Still judge: the history says which jobs are stuck (lost) and
		// whether their keys moved on without them (order).
		res.DrainErr = err
	}
	dead, err := h.poisonDiscarded(ctx)
	if err != nil {
		return res, err
	}
	res.PoisonDeadLettered = dead
	if err := h.queueFailures(ctx); err != nil {
		return res, err
	}
	res.QueueFailedSuccesses = len(h.queueFailed)
	for _, n := range h.nodes {
		if err := n.terminate(30 * time.Second); err != nil {
			return res, err
		}
	}
	if err := h.sink.terminate(15 * time.Second); err != nil {
		return res, err
	}
	return h.judge(res)
}

// cycle sends perCycle requests while injecting 1..FaultsPerCycle faults
// at random points of the cycle.
func (h *harness) cycle(ctx context.Context, c int, perCycle int64) error {
	if err := h.ensureUp(ctx); err != nil {
		return err
	}
	n := 1 + h.rnd.IntN(h.cfg.FaultsPerCycle)
	points := make([]int64, n)
	for i := range points {
		points[i] = perCycle/10 + h.rnd.Int64N(max(1, perCycle*8/10))
	}
	slices.Sort(points)
	start := h.wl.sent.Load()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.wl.run(ctx, perCycle, h.cfg.Concurrency, 0, fmt.Sprintf("cycle%d", c+1))
	}()
	for _, p := range points {
		for h.wl.sent.Load()-start < p {
			select {
			case <-done:
				// The quota ran out first (refusals count): fault now.
				p = 0
			case <-ctx.Done():
				<-done
				return ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
			if p == 0 {
				break
			}
		}
		if err := h.inject(ctx, h.drawFault()); err != nil {
			<-done
			return err
		}
	}
	<-done
	h.log.Info("cycle done", "cycle", c+1, "faults", n, "sent", h.wl.sent.Load())
	return nil
}

// drawFault deals the next fault from a shuffled deck of Config.Faults,
// reshuffled when empty: over len(Faults) draws every listed kind comes up
// once (and in proportion to its repeats), however the seed falls.
func (h *harness) drawFault() string {
	if len(h.deck) == 0 {
		h.deck = slices.Clone(h.cfg.Faults)
		h.rnd.Shuffle(len(h.deck), func(i, j int) { h.deck[i], h.deck[j] = h.deck[j], h.deck[i] })
	}
	f := h.deck[len(h.deck)-1]
	h.deck = h.deck[:len(h.deck)-1]
	return f
}

// inject applies one fault and brings the victim back.
func (h *harness) inject(ctx context.Context, kind string) error {
	// A node that died by itself since the last fault is restarted (and
	// logged) first: signaling a dead process would end the run.
	if err := h.ensureUp(ctx); err != nil {
		return err
	}
	h.counts[kind]++
	defer func() {
		for len(h.faultKinds) < len(h.faults) {
			h.faultKinds = append(h.faultKinds, kind)
		}
	}()
	downtime := time.Duration(20+h.rnd.IntN(200)) * time.Millisecond
	node := h.nodes[h.rnd.IntN(len(h.nodes))]
	h.log.Debug("fault", "kind", kind, "node", node.name)
	switch kind {
	case FaultKill:
		// The window closes when the process is reaped, not when the
		// signal is sent: until then it may still have delivered.
		at := time.Now()
		if err := node.kill(); err != nil {
			return err
		}
		h.faults = append(h.faults, history.Fault{From: at, To: time.Now()})
		sleepCtx(ctx, downtime)
		return node.start(ctx, 30*time.Second)
	case FaultTerm:
		from := time.Now()
		if err := node.terminate(30 * time.Second); err != nil {
			return err
		}
		h.faults = append(h.faults, history.Fault{From: from, To: time.Now()})
		sleepCtx(ctx, downtime)
		return node.start(ctx, 30*time.Second)
	case FaultStop:
		from := time.Now()
		if err := node.signal(syscall.SIGSTOP); err != nil {
			return err
		}
		sleepCtx(ctx, h.cfg.Lease+time.Second)
		err := node.signal(syscall.SIGCONT)
		h.faults = append(h.faults, history.Fault{From: from, To: time.Now()})
		return err
	case FaultSink:
		at := time.Now()
		if err := h.sink.kill(); err != nil {
			return err
		}
		h.sinkLogs[len(h.sinkLogs)-1].killed = time.Now()
		h.faults = append(h.faults, history.Fault{From: at, To: time.Now()})
		sleepCtx(ctx, downtime)
		return h.startSink(ctx)
	case FaultPGRestart:
		from := time.Now()
		if err := h.pg.stop(ctx, "immediate"); err != nil {
			return err
		}
		sleepCtx(ctx, downtime)
		err := h.pg.start(ctx)
		h.faults = append(h.faults, history.Fault{From: from, To: time.Now()})
		return err
	}
	return fmt.Errorf("unknown fault %q", kind)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (h *harness) newNode(ctx context.Context, i int) (*process, error) {
	addr, err := freeAddr(ctx)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("node%d", i+1)
	cfgPath := filepath.Join(h.dir, name+".yaml")
	var b strings.Builder
	fmt.Fprintf(&b, "node_name: %s\nworkers: 256\nshutdown_timeout: 2s\npoll_interval: 100ms\nlog:\n  level: warn\n  format: json\n", name)
	if h.cfg.Lease > 0 {
		fmt.Fprintf(&b, "lease: %s\n", h.cfg.Lease)
	}
	// Backoff starts at 100ms so that a retry never starts before the sink
	// noticed the previous attempt's connection close.
	fmt.Fprintf(&b, `kinds:
  chaos:
    type: webhook
    max_attempts: 50
    backoff_base: 100ms
    backoff_cap: 1s
    webhook:
      url: http://%s/deliver
      timeout: %s
`, h.sink.addr, h.cfg.WebhookTimeout)
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	args := []string{"serve", "--config", cfgPath, "--listen", addr, "--data-dir", filepath.Join(h.dir, name+"-data")}
	if h.cfg.Store != "" {
		args = append(args, "--store", h.cfg.Store)
	}
	return &process{name: name, addr: addr, bin: h.cfg.Bin, args: args, logf: filepath.Join(h.dir, name+".log"), readyPath: "/readyz"}, nil
}

func (h *harness) startSink(ctx context.Context) error {
	path := filepath.Join(h.dir, fmt.Sprintf("sink-%d.log", len(h.sinkLogs)+1))
	h.sinkLogs = append(h.sinkLogs, sinkLog{path: path})
	// The faults go on the command line: a restarted sink must not answer
	// even one delivery without them (a poison job would succeed).
	faults, err := json.Marshal(h.sinkFaults)
	if err != nil {
		return err
	}
	h.sink.args = []string{"chaos", "sink", "--listen", h.sink.addr, "--log", path, "--faults", string(faults)}
	return h.sink.start(ctx, 30*time.Second)
}

func (h *harness) setSinkFaults(ctx context.Context, f Faults) error {
	h.sinkFaults = f
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+h.sink.addr+"/faults", bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := h.wl.clientOrDefault().Do(req)
	if err != nil {
		return fmt.Errorf("set sink faults: %w", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("set sink faults: %s", resp.Status)
	}
	return nil
}

func (w *workload) clientOrDefault() *http.Client {
	if w == nil {
		return http.DefaultClient
	}
	return w.client
}

// ensureUp restarts any node that is not running (e.g. one that exited by
// itself, which is logged: it may be a bug).
func (h *harness) ensureUp(ctx context.Context) error {
	for _, n := range h.nodes {
		if !n.running() {
			if n.cmd != nil {
				h.unplanned++
				h.log.Warn("node had exited by itself; restarting it", "node", n.name, "err", n.err)
			}
			if err := n.start(ctx, 30*time.Second); err != nil {
				return err
			}
		}
	}
	if !h.sink.running() {
		return h.startSink(ctx)
	}
	return nil
}

// drain waits until no job is waiting or running.
func (h *harness) drain(ctx context.Context) error {
	deadline := time.Now().Add(h.cfg.DrainTimeout)
	for {
		left, err := h.backlog(ctx)
		if err == nil && left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			h.dumpUndrained(ctx)
			if err != nil {
				return fmt.Errorf("not drained after %s: stats: %w (see undrained.json)", h.cfg.DrainTimeout, err)
			}
			return fmt.Errorf("not drained after %s: %d jobs left (see undrained.json)", h.cfg.DrainTimeout, left)
		}
		sleepCtx(ctx, 50*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// dumpUndrained saves what the first node says about the jobs still
// waiting, for reading a run that did not drain.
func (h *harness) dumpUndrained(ctx context.Context) {
	var b bytes.Buffer
	get := func(path string) []byte {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.nodes[0].addr+path, nil)
		if err != nil {
			return nil
		}
		resp, err := h.wl.client.Do(req)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", path, err)
			return nil
		}
		defer resp.Body.Close() //nolint:errcheck // read below
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		fmt.Fprintf(&b, "%s:\n%s\n", path, body)
		return body
	}
	get("/v1/stats")
	keys := map[string]bool{}
	for _, st := range []string{"running", "available", "retryable", "scheduled"} {
		var list struct {
			Jobs []struct {
				Key string `json:"key"`
			} `json:"jobs"`
		}
		_ = json.Unmarshal(get("/v1/jobs?state="+st+"&limit=20"), &list)
		for _, j := range list.Jobs {
			if j.Key != "" && len(keys) < 10 {
				keys[j.Key] = true
			}
		}
	}
	// The keys' lines say why they do not move (waiting_on).
	for k := range keys {
		get("/v1/keys/" + url.PathEscape(k))
	}
	_ = os.WriteFile(filepath.Join(h.dir, "undrained.json"), b.Bytes(), 0o600)
}

func (h *harness) backlog(ctx context.Context) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.nodes[0].addr+"/v1/stats", nil)
	if err != nil {
		return 0, err
	}
	resp, err := h.wl.client.Do(req)
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close() //nolint:errcheck // decoded below
	var st struct {
		ByState map[string]int64 `json:"by_state"`
	}
	if err := decodeJSON(resp.Body, &st); err != nil {
		return -1, err
	}
	return st.ByState["scheduled"] + st.ByState["available"] + st.ByState["running"] + st.ByState["retryable"], nil
}

// poisonDiscarded asks herald how each acknowledged poison job ended,
// counts those discarded and remembers their uids for the checker (their
// attempts may all have failed before reaching the sink).
func (h *harness) poisonDiscarded(ctx context.Context) (int, error) {
	h.wl.mu.Lock()
	jobs := maps.Clone(h.wl.poisonJobs)
	h.wl.mu.Unlock()
	h.confirmedDead = map[int64]bool{}
	n := 0
	for uid, id := range jobs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/v1/jobs/%d", h.nodes[0].addr, id), nil)
		if err != nil {
			return 0, err
		}
		resp, err := h.wl.client.Do(req)
		if err != nil {
			return 0, fmt.Errorf("get poison job %d: %w", id, err)
		}
		var j struct {
			State   string `json:"state"`
			Attempt int    `json:"attempt"`
		}
		err = decodeJSON(resp.Body, &j)
		_ = resp.Body.Close()
		if err != nil {
			return 0, fmt.Errorf("get poison job %d: %w", id, err)
		}
		if j.State == "discarded" {
			n++
			h.confirmedDead[uid] = true
		} else {
			h.log.Warn("poison job not discarded", "job", id, "state", j.State, "attempt", j.Attempt)
		}
	}
	return n, nil
}

// queueFailures asks herald about every job the sink saw succeed more than
// once and remembers each of those successes that herald recorded as a
// failed attempt: an error of the same attempt number, recorded between
// the success's start and the job's next delivery. Herald retried because
// it never got the sink's answer in time, not because it lost a success.
// The time window matters: on SQLite an attempt cut short by a crash runs
// again under its number, and that rerun's failure explains nothing.
func (h *harness) queueFailures(ctx context.Context) error {
	byJob := map[int64][]delivery{} // by herald job id
	for _, l := range h.sinkLogs {
		ds, err := readSinkLog(l)
		if err != nil {
			return err
		}
		for _, d := range ds {
			byJob[d.jobID] = append(byJob[d.jobID], d)
		}
	}
	h.queueFailed = map[history.AttemptRef]bool{}
	for id, ds := range byJob {
		if countSucceeded(ds) < 2 {
			continue
		}
		errs, err := h.jobErrors(ctx, id)
		if err != nil {
			return err
		}
		slices.SortFunc(ds, func(a, b delivery) int { return a.Start.Compare(b.Start) })
		for i, d := range ds[:len(ds)-1] {
			if d.Outcome != history.Succeeded {
				continue
			}
			for _, e := range errs {
				if e.Attempt == d.Attempt && !e.At.Before(d.Start) && !e.At.After(ds[i+1].Start) {
					h.queueFailed[history.AttemptRef{ID: d.ID, Attempt: d.Attempt}] = true
					h.log.Info("a success herald recorded as failed", "job_id", id, "attempt", d.Attempt, "error", e.Message)
				}
			}
		}
	}
	return nil
}

func countSucceeded(ds []delivery) int {
	n := 0
	for _, d := range ds {
		if d.Outcome == history.Succeeded {
			n++
		}
	}
	return n
}

// jobErrors returns the attempt errors herald recorded for job id.
func (h *harness) jobErrors(ctx context.Context, id int64) ([]store.AttemptError, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/v1/jobs/%d", h.nodes[0].addr, id), nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.wl.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get job %d: %w", id, err)
	}
	defer resp.Body.Close() //nolint:errcheck // read only
	var j struct {
		Errors []store.AttemptError `json:"errors"`
	}
	if err := decodeJSON(resp.Body, &j); err != nil {
		return nil, fmt.Errorf("get job %d: %w", id, err)
	}
	return j.Errors, nil
}

func (h *harness) cleanup() {
	for _, n := range h.nodes {
		_ = n.kill()
	}
	if h.sink != nil {
		_ = h.sink.kill()
	}
	if h.pg != nil {
		_ = h.pg.stop(context.Background(), "immediate")
		// Keep its log beside the others before the cluster goes.
		if b, err := os.ReadFile(h.pg.logf); err == nil {
			_ = os.WriteFile(filepath.Join(h.dir, "postgres.log"), b, 0o600) //nolint:gosec // the harness's own directory
		}
		_ = h.pg.remove()
		h.pg = nil
	}
}

// judge reads the sink logs and checks the history.
func (h *harness) judge(res Result) (Result, error) {
	var all []delivery
	h.writeFaultLog()
	for _, l := range h.sinkLogs {
		ds, err := readSinkLog(l)
		if err != nil {
			return res, err
		}
		all = append(all, ds...)
	}
	recs, stale := fenceStale(all)
	res.StaleAttempts = len(stale)
	for _, d := range stale {
		h.log.Info("stale attempt fenced (a frozen node's send after its job ran again)",
			"job_id", d.jobID, "attempt", d.Attempt, "key", d.Key, "seq", d.Seq, "start", d.Start)
	}
	wl := h.wl
	wl.mu.Lock()
	defer wl.mu.Unlock()
	expectDead := map[int64]bool{}
	for uid := range wl.poisonUIDs {
		expectDead[uid] = true
	}
	rep := history.Check(wl.acks, recs, history.Options{
		ExpectDeadLettered: expectDead, ConfirmedDead: h.confirmedDead, Indeterminate: wl.indeterminate, Faults: slices.Clip(append([]history.Fault{}, h.faults...)),
		QueueFailed: h.queueFailed,
	})
	res.Report = rep
	res.Sent, res.Acked, res.Refused, res.Rejected, res.Indeterminate = int(wl.sent.Load()), len(wl.acks), wl.refused, wl.rejected, len(wl.indeterminate)
	res.RejectCodes = wl.rejectCodes
	res.Faults = h.counts
	res.UnplannedExits = h.unplanned
	if rep.Acknowledged > 0 {
		res.DuplicateRate = float64(rep.Duplicates) / float64(rep.Acknowledged)
	}

	// Poison jobs and latencies, from the acked jobs' records.
	firstOK := map[int64]time.Time{}
	for _, r := range recs {
		if r.Outcome != history.Succeeded {
			continue
		}
		if t, ok := firstOK[r.ID]; !ok || r.End.Before(t) {
			firstOK[r.ID] = r.End
		}
	}
	res.PoisonJobs = len(wl.poisonJobs)
	var base, poison []time.Duration
	roundBase, roundPoison := make([][]time.Duration, latencyRounds), make([][]time.Duration, latencyRounds)
	var csv strings.Builder // per-job latencies of the latency phases, for reading a run
	csv.WriteString("uid,key,seq,phase,sent_unix_nanos,latency_us\n")
	defer func() {
		if err := os.WriteFile(filepath.Join(h.dir, "latency.csv"), []byte(csv.String()), 0o600); err != nil {
			h.log.Warn("write latency.csv", "err", err)
		}
	}()
	for _, a := range wl.acks {
		if wl.poisonUIDs[a.ID] {
			continue
		}
		if a.Key == slowKey {
			continue
		}
		end, ok := firstOK[a.ID]
		if !ok {
			continue
		}
		d := max(0, end.Sub(wl.sentAt[a.ID]))
		phase, r, ok := parsePhase(wl.phaseOf[a.ID])
		if !ok {
			continue
		}
		fmt.Fprintf(&csv, "%d,%s,%d,%s,%d,%d\n", a.ID, a.Key, a.Seq, wl.phaseOf[a.ID], wl.sentAt[a.ID].UnixNano(), d.Microseconds())
		if phase == "baseline" {
			base = append(base, d)
			roundBase[r] = append(roundBase[r], d)
		} else {
			poison = append(poison, d)
			roundPoison[r] = append(roundPoison[r], d)
		}
	}
	for r := range latencyRounds {
		res.RoundRatios = append(res.RoundRatios, ratioOf(latencyOf(roundBase[r]), latencyOf(roundPoison[r])))
	}
	overRun := map[int64]bool{}
	for _, r := range recs {
		if wl.poisonUIDs[r.ID] && r.Attempt > poisonMaxAttempts {
			overRun[r.ID] = true
		}
	}
	res.PoisonOverRun = len(overRun)
	res.AmbiguousUnavailable = len(wl.ambiguous)
	stored := map[int64]bool{}
	for _, r := range recs {
		if wl.ambiguous[r.ID] && r.Outcome == history.Succeeded {
			stored[r.ID] = true
		}
	}
	res.AmbiguousStored = len(stored)
	res.Baseline, res.WithPoison = latencyOf(base), latencyOf(poison)
	return res, nil
}

// fenceStale drops the deliveries that a receiver fencing on
// Herald-Job-Id and Herald-Attempt refuses: those that arrived after a
// higher attempt of the same job had arrived (docs/webhooks.md). The
// sink itself does not fence, and its state would not survive its
// restarts; judging the whole run's logs in arrival order is the fence a
// receiver with durable state keeps.
func fenceStale(ds []delivery) (kept []history.Record, stale []delivery) {
	ds = slices.Clone(ds)
	slices.SortStableFunc(ds, func(a, b delivery) int { return a.Start.Compare(b.Start) })
	highest := map[int64]int{}
	for _, d := range ds {
		if d.jobID != 0 && d.Attempt < highest[d.jobID] {
			stale = append(stale, d)
			continue
		}
		if d.jobID != 0 {
			highest[d.jobID] = d.Attempt
		}
		kept = append(kept, d.Record)
	}
	return kept, stale
}

// writeFaultLog leaves the fault windows beside the sink logs, for
// reading a failed run: "<kind> <from-unix-nanos> <to-unix-nanos>".
func (h *harness) writeFaultLog() {
	var b strings.Builder
	for i, f := range h.faults {
		fmt.Fprintf(&b, "%s %d %d\n", h.faultKinds[i], f.From.UnixNano(), f.To.UnixNano())
	}
	if err := os.WriteFile(filepath.Join(h.dir, "faults.log"), []byte(b.String()), 0o600); err != nil {
		h.log.Warn("write fault log", "err", err)
	}
}

func latencyOf(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(math.Ceil(p*float64(len(ds))))-1)] }
	return Latency{Jobs: len(ds), P50: q(0.50), P99: q(0.99)}
}
