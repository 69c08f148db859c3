package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald"
)

func TestJobsList(t *testing.T) {
	t.Parallel()
	// Every subtest stores the same jobs on its own server (ids 1-27), so
	// that it can count its own requests: 25 scheduled noop jobs over keys
	// k0..k4, then 2 slow ones under "line": the first runs (and blocks),
	// the second waits behind it.
	fixture := func(t *testing.T) *cliBundle {
		t.Helper()
		b := setupCLI(t)
		var ps []herald.EnqueueParams
		for i := range 25 {
			ps = append(ps, herald.EnqueueParams{Kind: "noop", Key: fmt.Sprintf("k%d", i%5), Delay: time.Hour})
		}
		b.enqueue(t, ps...)
		b.enqueue(t, herald.EnqueueParams{Kind: "slow", Key: "line"}, herald.EnqueueParams{Kind: "slow", Key: "line"})
		b.waitState(t, 26, herald.StateRunning)
		return b
	}
	var ids []int64
	for id := range int64(25) {
		ids = append(ids, id+1)
	}
	slow := []int64{26, 27}

	for _, tt := range []struct {
		name         string
		args         []string
		wantIDs      []int64
		wantRequests int    // GET /v1/jobs
		wantStderr   string // substring; "" means empty
		wantErr      string
	}{
		{name: "default limit", wantIDs: slices.Concat(ids, slow), wantRequests: 1},
		{name: "limit", args: []string{"--limit", "5"}, wantIDs: ids[:5], wantRequests: 1,
			wantStderr: "more jobs match: showing the first 5; use --all or a larger --limit"},
		{name: "limit across pages", args: []string{"--limit", "12", "--page-size", "5"}, wantIDs: ids[:12], wantRequests: 3,
			wantStderr: "more jobs match"},
		{name: "all follows next_cursor", args: []string{"--all", "--page-size", "10"}, wantIDs: slices.Concat(ids, slow), wantRequests: 3},
		{name: "all, exact multiple of the page", args: []string{"--all", "--page-size", "9", "--kind", "slow"}, wantIDs: slow, wantRequests: 1},
		{name: "state", args: []string{"--state", "running"}, wantIDs: slow[:1], wantRequests: 1},
		{name: "kind and key", args: []string{"--kind", "noop", "--key", "k2", "--all"}, wantIDs: []int64{ids[2], ids[7], ids[12], ids[17], ids[22]}, wantRequests: 1},
		{name: "nothing matches", args: []string{"--key", "nobody"}, wantRequests: 1},
		{name: "unknown state", args: []string{"--state", "lost"}, wantErr: `--state: unknown state "lost"; one of scheduled, available`},
		{name: "bad page size", args: []string{"--page-size", "1001"}, wantErr: "--page-size must be from 1 to 1000"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := fixture(t)
			for _, asJSON := range []bool{false, true} {
				args := append([]string{"jobs", "list"}, tt.args...)
				if asJSON {
					args = append(args, "--json")
				}
				before := b.count("GET /v1/jobs")
				out, errOut, err := b.runCLI(t, "", args...)
				if tt.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%v: %v", args, err)
				}
				if got := b.count("GET /v1/jobs") - before; got != tt.wantRequests {
					t.Errorf("%v: %d requests, want %d", args, got, tt.wantRequests)
				}
				if (tt.wantStderr == "") != (errOut == "") || !strings.Contains(errOut, tt.wantStderr) {
					t.Errorf("%v: stderr = %q, want %q", args, errOut, tt.wantStderr)
				}
				got := listedIDs(t, out, asJSON)
				if fmt.Sprint(got) != fmt.Sprint(nonNil(tt.wantIDs)) {
					t.Errorf("%v listed ids %v, want %v", args, got, tt.wantIDs)
				}
			}
		})
	}
}

func nonNil(ids []int64) []int64 {
	if ids == nil {
		return []int64{}
	}
	return ids
}

// listedIDs reads the ids from jobs list output: a table with a header, or
// NDJSON.
func listedIDs(t *testing.T, out string, asJSON bool) []int64 {
	t.Helper()
	ids := []int64{}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if !asJSON {
		if fields := strings.Fields(lines[0]); strings.Join(fields, " ") != "ID KIND KEY STATE ATTEMPT CREATED_AT" {
			t.Fatalf("table header = %q", lines[0])
		}
		for _, line := range lines[1:] {
			fields := strings.Fields(line)
			if len(fields) != 6 {
				t.Fatalf("table row %q has %d columns, want 6", line, len(fields))
			}
			id, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				t.Fatalf("table row %q: %v", line, err)
			}
			if _, err := time.Parse(time.RFC3339Nano, fields[5]); err != nil {
				t.Errorf("created_at %q: %v", fields[5], err)
			}
			ids = append(ids, id)
		}
		return ids
	}
	if out == "" {
		return ids
	}
	for _, line := range lines {
		var j struct {
			ID      int64           `json:"id"`
			Kind    string          `json:"kind"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal([]byte(line), &j); err != nil || j.Kind == "" || j.Payload == nil {
			t.Fatalf("NDJSON line %q is not a job: %v", line, err)
		}
		ids = append(ids, j.ID)
	}
	return ids
}

func TestJobActions(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		// prepare stores the jobs the test needs and returns the id to use.
		prepare   func(t *testing.T, b *cliBundle) int64
		args      []string // after the id is appended
		wantState string
		wantErr   string
	}{
		{
			name: "get",
			prepare: func(t *testing.T, b *cliBundle) int64 {
				t.Helper()
				return b.enqueue(t, herald.EnqueueParams{Kind: "noop", Delay: time.Hour})[0]
			},
			args: []string{"jobs", "get"}, wantState: "scheduled",
		},
		{
			name:    "get a missing job: 404",
			prepare: func(*testing.T, *cliBundle) int64 { return 999 },
			args:    []string{"jobs", "get"}, wantErr: "job 999: server answered 404 not_found: no job with that id",
		},
		{
			name: "cancel a scheduled job",
			prepare: func(t *testing.T, b *cliBundle) int64 {
				t.Helper()
				return b.enqueue(t, herald.EnqueueParams{Kind: "noop", Delay: time.Hour})[0]
			},
			args: []string{"jobs", "cancel"}, wantState: "cancelled",
		},
		{
			name: "cancel a running job: 409",
			prepare: func(t *testing.T, b *cliBundle) int64 {
				t.Helper()
				id := b.enqueue(t, herald.EnqueueParams{Kind: "slow"})[0]
				b.waitState(t, id, herald.StateRunning)
				return id
			},
			args: []string{"jobs", "cancel"}, wantErr: "server answered 409 wrong_state: the job is in the wrong state for this operation",
		},
		{
			name: "retry a cancelled job",
			prepare: func(t *testing.T, b *cliBundle) int64 {
				t.Helper()
				id := b.enqueue(t, herald.EnqueueParams{Kind: "slow", Delay: time.Hour})[0]
				if _, err := b.client.Cancel(t.Context(), id); err != nil {
					t.Fatal(err)
				}
				return id
			},
			args: []string{"jobs", "retry"}, wantState: "available|running",
		},
		{
			name: "retry a completed job: 409",
			prepare: func(t *testing.T, b *cliBundle) int64 {
				t.Helper()
				id := b.enqueue(t, herald.EnqueueParams{Kind: "noop"})[0]
				b.waitState(t, id, herald.StateCompleted)
				return id
			},
			args: []string{"jobs", "retry"}, wantErr: "409 wrong_state",
		},
		{
			name:    "retry a missing job: 404",
			prepare: func(*testing.T, *cliBundle) int64 { return 12345 },
			args:    []string{"jobs", "retry"}, wantErr: "job 12345: server answered 404 not_found",
		},
		{
			name:    "not an id",
			prepare: func(*testing.T, *cliBundle) int64 { return 0 },
			args:    []string{"jobs", "get"}, wantErr: `job id must be a positive integer, got "0"`,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupCLI(t)
			id := tt.prepare(t, b)
			args := slices.Concat(tt.args, []string{strconv.FormatInt(id, 10)})
			out, _, err := b.runCLI(t, "", args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				if out != "" {
					t.Errorf("a failed command printed %q", out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			job := decodeJob(t, out)
			if job["id"] != float64(id) || !strings.Contains("|"+tt.wantState+"|", "|"+fmt.Sprint(job["state"])+"|") {
				t.Errorf("printed job %v, want id %d in state %s", job, id, tt.wantState)
			}
			if _, ok := job["errors"]; !ok {
				t.Errorf("printed job lacks its error history: %s", out)
			}
		})
	}
}
