package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldmq/herald/internal/chaos"
)

// heraldBin is the binary under test, built once by TestMain.
var heraldBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "herald-chaos-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	heraldBin = filepath.Join(dir, "herald")
	build := exec.CommandContext(context.Background(), "go", "build", "-o", heraldBin, "github.com/heraldmq/herald/cmd/herald") //nolint:gosec // fixed arguments and a temp path
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build herald:", err)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// run runs the harness and fails the test with the summary if a guarantee
// did not hold; the working directory is kept on failure.
func run(t *testing.T, cfg chaos.Config) chaos.Result {
	t.Helper()
	cfg.Bin = heraldBin
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	res, err := chaos.Run(ctx, cfg)
	if err == nil || errors.Is(err, chaos.ErrFailed) {
		t.Logf("chaos summary:\n%s", res.Summary())
	}
	if err != nil {
		t.Fatalf("chaos: %v", err)
	}
	return res
}

// TestChaosSQLite is the CI run on the default store: one node, at least
// ten cycles of faults (mostly kill -9), the latency phases with and
// without the poison key, and a full history check.
func TestChaosSQLite(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the chaos run takes about 20 s")
	}
	res := run(t, chaos.Config{Cycles: 10, Events: 4000, LatencyEvents: 1500})
	if res.Cycles != 10 {
		t.Errorf("ran %d cycles, want 10", res.Cycles)
	}
	if res.Faults[chaos.FaultKill] == 0 {
		t.Errorf("no kill -9 in 10 cycles (faults: %v)", res.Faults)
	}
	if res.PoisonJobs == 0 {
		t.Error("the workload acknowledged no poison job: the dead-letter check judged nothing")
	}
	if res.Report.Delivered < res.Acked/2 {
		t.Errorf("only %d of %d acknowledged jobs delivered", res.Report.Delivered, res.Acked)
	}
}

// TestChaosPostgresMultiNode runs three nodes on a private PostgreSQL with
// short leases: kill -9, SIGTERM, SIGSTOP beyond the lease, sink restarts
// and PostgreSQL crash-restarts.
func TestChaosPostgresMultiNode(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the multi-node chaos run takes about a minute")
	}
	if _, err := chaos.PostgresBin(); err != nil {
		if os.Getenv("HERALD_REQUIRE_SERVICES") == "1" {
			t.Fatalf("HERALD_REQUIRE_SERVICES=1 but %v", err)
		}
		t.Skipf("%v: install postgresql to run the multi-node harness", err)
	}
	// Six cycles deal at least six faults: the whole deck, so every kind
	// (two kills) happens in every run.
	faults := []string{chaos.FaultKill, chaos.FaultKill, chaos.FaultStop, chaos.FaultPGRestart, chaos.FaultTerm, chaos.FaultSink}
	res := run(t, chaos.Config{Postgres: true, Nodes: 3, Cycles: 6, Events: 3000, LatencyEvents: -1, Lease: 2 * time.Second, Faults: faults})
	if res.Cycles != 6 {
		t.Errorf("ran %d cycles, want 6", res.Cycles)
	}
	for _, f := range faults {
		if res.Faults[f] == 0 {
			t.Errorf("no %s fault in 6 cycles (faults: %v)", f, res.Faults)
		}
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  chaos.Config
		want string
	}{
		{"no binary", chaos.Config{}, "Bin is required"},
		{"several SQLite nodes", chaos.Config{Bin: "x", Nodes: 2}, "needs a shared store"},
		{"unknown fault", chaos.Config{Bin: "x", Faults: []string{"kill", "meteor"}}, `unknown fault "meteor"`},
		{"flat zipf", chaos.Config{Bin: "x", ZipfS: 0.5}, "ZipfS must be > 1"},
		{"too many failures", chaos.Config{Bin: "x", FailRate: 0.6}, "FailRate and TimeoutRate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := chaos.Run(t.Context(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run: %v, want an error containing %q", err, tt.want)
			}
			if errors.Is(err, chaos.ErrFailed) {
				t.Errorf("a config error matched ErrFailed: %v", err)
			}
		})
	}
}

func TestDefaultsDropMultiNodeFaultsOnSQLite(t *testing.T) {
	t.Parallel()
	c := chaos.Config{Faults: []string{chaos.FaultKill, chaos.FaultStop, chaos.FaultPGRestart}}.WithDefaults()
	if len(c.Faults) != 1 || c.Faults[0] != chaos.FaultKill || c.Nodes != 1 || c.Lease != 0 {
		t.Errorf("SQLite defaults: faults %v nodes %d lease %s, want [kill] 1 0s", c.Faults, c.Nodes, c.Lease)
	}
	pg := chaos.Config{Postgres: true}.WithDefaults()
	if pg.Nodes != 3 || pg.Lease != 2*time.Second {
		t.Errorf("PostgreSQL defaults: nodes %d lease %s, want 3 and 2s", pg.Nodes, pg.Lease)
	}
}
