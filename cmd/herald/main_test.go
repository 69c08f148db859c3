package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// run executes the root command with args and returns stdout.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, err := run(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "herald ") || !strings.HasSuffix(out, "\n") {
		t.Errorf("version printed %q, want \"herald <version>\\n\"", out)
	}
	if _, err := run(t, "version", "extra"); err == nil {
		t.Error("version accepted an argument")
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	if _, err := run(t, "no-such-command"); err == nil {
		t.Error("unknown command succeeded")
	}
}

// A small makespan run end to end: the scenario's own history check must
// find nothing lost, out of order or overlapping.
func TestBenchMakespanSmall(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "bench.db")
	out, err := run(t, "bench", "makespan", "--store", db, "--events", "120", "--keys", "6", "--work", "2ms", "--json")
	if err != nil {
		t.Fatalf("bench makespan: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var res struct {
		Scenario        string  `json:"scenario"`
		Events          int     `json:"events"`
		Lost            int     `json:"lost"`
		OrderViolations int     `json:"order_violations"`
		Overlaps        int     `json:"overlaps"`
		MakespanS       float64 `json:"makespan_s"`
		BoundS          float64 `json:"bound_s"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line %q is not JSON: %v", lines[len(lines)-1], err)
	}
	if res.Scenario != "makespan" || res.Events != 120 || res.Lost != 0 || res.OrderViolations != 0 || res.Overlaps != 0 {
		t.Errorf("makespan result %+v; want 120 events, nothing lost, no order violations or overlaps", res)
	}
	if res.BoundS <= 0 || res.MakespanS < res.BoundS {
		t.Errorf("makespan %.3fs below the lower bound %.3fs: per-key jobs cannot have run one at a time", res.MakespanS, res.BoundS)
	}
}

func TestBenchThroughputSmall(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "bench.db")
	out, err := run(t, "bench", "throughput", "--store", db, "--jobs", "500", "--keys", "20", "--batch", "50", "--json")
	if err != nil {
		t.Fatalf("bench throughput: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var res struct {
		Scenario      string  `json:"scenario"`
		Jobs          int     `json:"jobs"`
		ProcessedPerS float64 `json:"processed_per_s"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line %q is not JSON: %v", lines[len(lines)-1], err)
	}
	if res.Scenario != "throughput" || res.Jobs != 500 || res.ProcessedPerS <= 0 {
		t.Errorf("throughput result %+v", res)
	}
}
