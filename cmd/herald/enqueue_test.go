package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald"
)

func TestEnqueue(t *testing.T) {
	t.Parallel()
	payloadFile := filepath.Join(t.TempDir(), "payload.json")
	if err := os.WriteFile(payloadFile, []byte(`{"to": "a@example.com"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runAt := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for _, tt := range []struct {
		name       string
		args       []string
		stdin      string
		wantErr    string
		want       map[string]any // fields of the printed job
		wantStderr string
	}{
		{
			name: "one job",
			args: []string{"--kind", "noop", "--key", "account-42", "--payload", `{"n": 1}`},
			want: map[string]any{"kind": "noop", "key": "account-42", "payload": map[string]any{"n": 1.0}},
		},
		{
			name: "no payload is null",
			args: []string{"--kind", "noop"},
			want: map[string]any{"kind": "noop", "key": "", "payload": nil},
		},
		{
			name: "payload file, delay, max attempts",
			args: []string{"--kind", "noop", "--payload-file", payloadFile, "--delay", "1h", "--max-attempts", "3"},
			want: map[string]any{"state": "scheduled", "max_attempts": 3.0, "payload": map[string]any{"to": "a@example.com"}},
		},
		{
			name:  "payload from stdin",
			args:  []string{"--kind", "noop", "--payload-file", "-", "--run-at", runAt},
			stdin: `[1, 2]`,
			want:  map[string]any{"state": "scheduled", "payload": []any{1.0, 2.0}, "run_at": runAt},
		},
		{name: "kind required", args: []string{"--key", "k"}, wantErr: "--kind is required"},
		{name: "invalid payload", args: []string{"--kind", "noop", "--payload", "{oops"}, wantErr: "the payload is not valid JSON"},
		{name: "bad run-at", args: []string{"--kind", "noop", "--run-at", "tomorrow"}, wantErr: "--run-at must be an RFC 3339 time"},
		{name: "negative delay", args: []string{"--kind", "noop", "--delay", "-1s"}, wantErr: "--delay must not be negative"},
		{name: "delay and run-at", args: []string{"--kind", "noop", "--delay", "1s", "--run-at", runAt}, wantErr: "[delay run-at] were all set"},
		{name: "ndjson and kind", args: []string{"--kind", "noop", "--ndjson", "-"}, wantErr: "were all set"},
		{name: "batch size without ndjson", args: []string{"--kind", "noop", "--batch-size", "5"}, wantErr: "--batch-size applies only with --ndjson"},
		{
			name:    "unknown kind: the server's error with its field",
			args:    []string{"--kind", "nope"},
			wantErr: "enqueue: server answered 422 unknown_kind (field kind): ",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupCLI(t)
			out, errOut, err := b.runCLI(t, tt.stdin, append([]string{"enqueue"}, tt.args...)...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				if n := b.jobCount(t); n != 0 {
					t.Errorf("a failed enqueue stored %d jobs", n)
				}
				return
			}
			if err != nil {
				t.Fatalf("enqueue: %v\n%s", err, errOut)
			}
			job := decodeJob(t, out)
			for k, want := range tt.want {
				if fmt.Sprint(job[k]) != fmt.Sprint(want) {
					t.Errorf("job %s = %v, want %v", k, job[k], want)
				}
			}
			if b.jobCount(t) != 1 {
				t.Errorf("store holds %d jobs, want 1", b.jobCount(t))
			}
		})
	}
}

// Enqueueing with the same idempotency key twice stores one job and says so.
func TestEnqueueIdempotent(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	args := []string{"enqueue", "--kind", "noop", "--idempotency-key", "evt-1", "--delay", "1h"}
	first, errOut, err := b.runCLI(t, "", args...)
	if err != nil || errOut != "" {
		t.Fatalf("first enqueue: %v %s", err, errOut)
	}
	second, errOut, err := b.runCLI(t, "", args...)
	if err != nil {
		t.Fatalf("second enqueue: %v", err)
	}
	if decodeJob(t, first)["id"] != decodeJob(t, second)["id"] {
		t.Errorf("the repeat returned another job:\n%s\n%s", first, second)
	}
	if !strings.Contains(errOut, "already exists") {
		t.Errorf("stderr = %q, want a note that the job already existed", errOut)
	}
	if n := b.jobCount(t); n != 1 {
		t.Errorf("store holds %d jobs, want 1", n)
	}
}

// ndjsonLines returns n job lines; bad, if non-zero, is replaced by badLine.
func ndjsonLines(n, bad int, badLine string) string {
	var sb strings.Builder
	for i := 1; i <= n; i++ {
		if i == bad {
			sb.WriteString(badLine + "\n")
			continue
		}
		fmt.Fprintf(&sb, `{"kind":"noop","key":"k%d","payload":{"i":%d}}`+"\n", i%7, i)
	}
	return sb.String()
}

func TestEnqueueNDJSON(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name        string
		input       string
		fromFile    bool
		args        []string
		wantErr     []string // substrings of the error
		wantOut     string   // substring of stdout
		wantStored  int
		wantBatches int // POST /v1/jobs/batch requests
	}{
		{
			name:  "100 lines in batches of 30",
			input: ndjsonLines(100, 0, ""), args: []string{"--batch-size", "30"},
			wantOut: "enqueued 100 jobs in 4 batches in ", wantStored: 100, wantBatches: 4,
		},
		{
			name:  "from a file, blank lines skipped, progress bar",
			input: "\n" + ndjsonLines(10, 0, "") + "\n  \n", fromFile: true, args: []string{"--batch-size", "4", "--progress"},
			wantOut: "enqueued 10 jobs in 3 batches in ", wantStored: 10, wantBatches: 3,
		},
		{
			name: "default batch size", input: ndjsonLines(25, 0, ""),
			wantOut: "enqueued 25 jobs in 1 batch in ", wantStored: 25, wantBatches: 1,
		},
		{
			name: "empty input", input: "",
			wantOut: "enqueued 0 jobs in 0 batches", wantStored: 0, wantBatches: 0,
		},
		{
			name:  "malformed line 57 stops before its batch is sent",
			input: ndjsonLines(100, 57, `{"kind":"noop",`), args: []string{"--batch-size", "30"},
			wantErr: []string{
				"line 57: invalid JSON: ",
				"batch 2 (lines 31-57) was not sent; already stored: 30 jobs from 1 earlier batch",
			},
			wantStored: 30, wantBatches: 1,
		},
		{
			name:  "line 57 not an object",
			input: ndjsonLines(100, 57, `[1]`), args: []string{"--batch-size", "30"},
			wantErr:    []string{"line 57: not a JSON object"},
			wantStored: 30, wantBatches: 1,
		},
		{
			name:  "line 57 refused by the server: nothing of its batch is stored",
			input: ndjsonLines(100, 57, `{"kind":"nope","payload":null}`), args: []string{"--batch-size", "30"},
			wantErr: []string{
				"line 57: the server refused the job: server answered 422 unknown_kind (field kind): kind: no handler registered for kind \"nope\"; ",
				"nothing from batch 2 (lines 31-60) was stored; already stored: 30 jobs from 1 earlier batch",
			},
			wantStored: 30, wantBatches: 2,
		},
		{
			name:  "unknown field on line 3",
			input: ndjsonLines(5, 3, `{"kind":"noop","payload":1,"queue":"red"}`), args: []string{"--batch-size", "2"},
			wantErr:    []string{"line 3: the server refused the job: server answered 400 unknown_field (field queue)", "already stored: 2 jobs from 1 earlier batch"},
			wantStored: 2, wantBatches: 2,
		},
		{name: "batch size too large", input: ndjsonLines(1, 0, ""), args: []string{"--batch-size", "10001"}, wantErr: []string{"--batch-size must be from 1 to 10000"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupCLI(t)
			args := append([]string{"enqueue", "--ndjson", "-"}, tt.args...)
			stdin := tt.input
			if tt.fromFile {
				path := filepath.Join(t.TempDir(), "jobs.ndjson")
				if err := os.WriteFile(path, []byte(tt.input), 0o600); err != nil {
					t.Fatal(err)
				}
				args[2], stdin = path, ""
			}
			out, errOut, err := b.runCLI(t, stdin, args...)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("enqueue --ndjson succeeded: %s", out)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error = %q\nwant it to contain %q", err, want)
					}
				}
			} else if err != nil {
				t.Fatalf("enqueue --ndjson: %v\n%s", err, errOut)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("stdout = %q, want it to contain %q", out, tt.wantOut)
			}
			if n := b.jobCount(t); n != tt.wantStored {
				t.Errorf("store holds %d jobs, want %d", n, tt.wantStored)
			}
			if n := b.count("POST /v1/jobs/batch"); n != tt.wantBatches {
				t.Errorf("%d batch requests, want %d", n, tt.wantBatches)
			}
			if progress := slices.Contains(tt.args, "--progress"); progress != (errOut != "") {
				t.Errorf("stderr = %q; want a progress bar exactly when --progress is given", errOut)
			}
		})
	}
}

// Jobs of a key keep their file order across batches.
func TestEnqueueNDJSONOrder(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	if _, _, err := b.runCLI(t, ndjsonLines(40, 0, ""), "enqueue", "--ndjson", "-", "--batch-size", "7"); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.client.List(t.Context(), herald.ListParams{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := range jobs {
		if want := fmt.Sprintf(`{"i":%d}`, i+1); string(j.Payload) != want {
			t.Fatalf("job %d has payload %s, want %s: file order lost", j.ID, j.Payload, want)
		}
	}
}
