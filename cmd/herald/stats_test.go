package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald"
)

func TestStats(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	done := b.enqueue(t, herald.EnqueueParams{Kind: "noop"}, herald.EnqueueParams{Kind: "noop"})
	b.enqueue(t, herald.EnqueueParams{Kind: "noop", Delay: time.Hour})
	running := b.enqueue(t, herald.EnqueueParams{Kind: "slow", Key: "a"})
	b.waitState(t, done[1], herald.StateCompleted)
	b.waitState(t, running[0], herald.StateRunning)
	if err := b.client.Pause("slow"); err != nil {
		t.Fatal(err)
	}
	// The counters follow the store's commits by a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := b.client.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if m.Started == 3 && m.Completed == 2 && m.Running == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters %+v after 10s; want 3 started, 2 completed, 1 running", m)
		}
		time.Sleep(5 * time.Millisecond)
	}

	for _, tt := range []struct {
		name  string
		args  []string
		check func(t *testing.T, out string)
	}{
		{
			name: "table",
			check: func(t *testing.T, out string) {
				t.Helper()
				lines := strings.Split(out, "\n")
				want := [][]string{
					{"KIND", "SCHEDULED", "AVAILABLE", "RUNNING", "RETRYABLE", "COMPLETED", "DISCARDED", "CANCELLED", "PAUSED"},
					{"noop", "1", "0", "0", "0", "2", "0", "0", "no"},
					{"slow", "0", "0", "1", "0", "0", "0", "0", "yes"},
					{"total", "1", "0", "1", "0", "2", "0", "0"},
				}
				for i, w := range want {
					if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(w, " ") {
						t.Errorf("line %d = %q, want fields %v", i+1, lines[i], w)
					}
				}
				for _, s := range []string{"running now: 1", "since the server started: enqueued 4, started 3, completed 2"} {
					if !strings.Contains(out, s) {
						t.Errorf("stats output lacks %q:\n%s", s, out)
					}
				}
			},
		},
		{
			name: "json",
			args: []string{"--json"},
			check: func(t *testing.T, out string) {
				t.Helper()
				var st struct {
					ByState map[string]int64 `json:"by_state"`
				}
				if err := json.Unmarshal([]byte(out), &st); err != nil {
					t.Fatalf("stats --json: %v\n%s", err, out)
				}
				if st.ByState["completed"] != 2 || st.ByState["scheduled"] != 1 || st.ByState["running"] != 1 {
					t.Errorf("by_state = %v", st.ByState)
				}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, _, err := b.runCLI(t, "", append([]string{"stats"}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, out)
		})
	}
}

func TestKeysGet(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	head := b.enqueue(t, herald.EnqueueParams{Kind: "slow", Key: "acct/42 x"}, herald.EnqueueParams{Kind: "slow", Key: "acct/42 x"})
	b.waitState(t, head[0], herald.StateRunning)
	for _, tt := range []struct {
		name        string
		key         string
		wantPending float64
		wantWaiting string
		wantHead    bool
	}{
		{name: "a key with a slash and a space, running", key: "acct/42 x", wantPending: 2, wantWaiting: "running", wantHead: true},
		{name: "an empty line", key: "nobody", wantPending: 0, wantWaiting: "empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, _, err := b.runCLI(t, "", "keys", "get", tt.key)
			if err != nil {
				t.Fatal(err)
			}
			got := decodeJob(t, out)
			if got["key"] != tt.key || got["pending"] != tt.wantPending || got["waiting_on"] != tt.wantWaiting || (got["head"] != nil) != tt.wantHead {
				t.Errorf("keys get %q printed %v", tt.key, got)
			}
		})
	}
}

func TestKinds(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		args    []string
		wantOut string
		wantErr string
	}{
		{name: "pause", args: []string{"pause", "noop"}, wantOut: "kind noop paused\n"},
		{name: "resume", args: []string{"resume", "noop"}, wantOut: "kind noop resumed\n"},
		{name: "unknown kind", args: []string{"pause", "nope"}, wantErr: `pause kind "nope": server answered 404 unknown_kind (field kind): no kind "nope" is registered`},
		{name: "no kind", args: []string{"pause"}, wantErr: "accepts 1 arg(s), received 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupCLI(t)
			out, _, err := b.runCLI(t, "", append([]string{"kinds"}, tt.args...)...)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || out != tt.wantOut {
				t.Fatalf("kinds %v printed %q (%v), want %q", tt.args, out, err, tt.wantOut)
			}
		})
	}
}

// Pausing through the CLI holds jobs back; resuming lets them run.
func TestKindsPauseHoldsJobs(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	if _, _, err := b.runCLI(t, "", "kinds", "pause", "noop"); err != nil {
		t.Fatal(err)
	}
	id := b.enqueue(t, herald.EnqueueParams{Kind: "noop"})[0]
	time.Sleep(50 * time.Millisecond) // several poll intervals
	if j, err := b.client.Get(t.Context(), id); err != nil || j.State != herald.StateAvailable {
		t.Fatalf("job of a paused kind: %v, %v; want it available, not run", j, err)
	}
	if _, _, err := b.runCLI(t, "", "kinds", "resume", "noop"); err != nil {
		t.Fatal(err)
	}
	b.waitState(t, id, herald.StateCompleted)
}
