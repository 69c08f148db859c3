package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// jobStates are the states a job can be in, as the API names them.
var jobStates = []string{"scheduled", "available", "running", "retryable", "completed", "discarded", "cancelled"}

// maxPageSize is the API's largest page (GET /v1/jobs?limit=).
const maxPageSize = 1000

func newJobsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List, inspect, retry and cancel jobs on a running herald",
		Long: `List, inspect, retry and cancel jobs through a running herald's HTTP API.

The server is --server (or $HERALD_SERVER, else http://127.0.0.1:8080); the
bearer token is --token (or $HERALD_TOKEN).`,
		Args: cobra.NoArgs,
	}
	cf := newClientFlags(cmd)
	cmd.AddCommand(newJobsListCmd(cf), newJobsGetCmd(cf), newJobsRetryCmd(cf), newJobsCancelCmd(cf))
	return cmd
}

func newJobsListCmd(cf *clientFlags) *cobra.Command {
	var (
		state, kind, key string
		limit, pageSize  int
		all, asJSON      bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs in id order, optionally filtered by state, kind and key",
		Long: `List jobs in id order (oldest first), optionally filtered by state, kind
and key.

Prints a table (id, kind, key, state, attempt, created_at), or with --json one
job object per line (NDJSON), as the API renders it. At most --limit jobs are
printed; --all follows the API's next_cursor until every matching job is
printed. When more jobs match than were printed, a note on stderr says so.`,
		Example: `  herald jobs list --state discarded
  herald jobs list --kind process-event --key account-42 --all
  herald jobs list --state completed --all --json | jq -r .id`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state != "" && !slices.Contains(jobStates, state) {
				return fmt.Errorf("--state: unknown state %q; one of %s", state, strings.Join(jobStates, ", "))
			}
			if limit < 1 && !all {
				return fmt.Errorf("--limit must be at least 1, got %d", limit)
			}
			if pageSize < 1 || pageSize > maxPageSize {
				return fmt.Errorf("--page-size must be from 1 to %d, got %d", maxPageSize, pageSize)
			}
			c, err := cf.client(cmd)
			if err != nil {
				return err
			}
			defer c.close()

			out := cmd.OutOrStdout()
			var table *tabwriter.Writer
			if !asJSON {
				table = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(table, "ID\tKIND\tKEY\tSTATE\tATTEMPT\tCREATED_AT")
			}
			q := url.Values{}
			for name, v := range map[string]string{"state": state, "kind": kind, "key": key} {
				if v != "" {
					q.Set(name, v)
				}
			}
			printed, more := 0, false
			for {
				size := pageSize
				if !all {
					size = min(size, limit-printed)
				}
				q.Set("limit", strconv.Itoa(size))
				var page struct {
					Jobs       []json.RawMessage `json:"jobs"`
					NextCursor *string           `json:"next_cursor"`
				}
				if err := c.do(cmd.Context(), http.MethodGet, "/v1/jobs", q, nil, &page); err != nil {
					return fmt.Errorf("list jobs: %w", err)
				}
				for _, raw := range page.Jobs {
					if err := printJobRow(out, table, raw); err != nil {
						return err
					}
				}
				printed += len(page.Jobs)
				if page.NextCursor == nil {
					break
				}
				if !all && printed >= limit {
					more = true
					break
				}
				q.Set("cursor", *page.NextCursor)
			}
			if table != nil {
				if err := table.Flush(); err != nil {
					return err
				}
			}
			if more {
				fmt.Fprintf(cmd.ErrOrStderr(), "more jobs match: showing the first %d; use --all or a larger --limit\n", printed)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&state, "state", "", "only jobs in this state: "+strings.Join(jobStates, ", "))
	fs.StringVar(&kind, "kind", "", "only jobs of this kind")
	fs.StringVar(&key, "key", "", "only jobs of this key")
	fs.IntVar(&limit, "limit", 100, "print at most this many jobs")
	fs.BoolVar(&all, "all", false, "print every matching job, following pages (ignores --limit)")
	fs.IntVar(&pageSize, "page-size", maxPageSize, "jobs fetched per request, 1 to 1000")
	fs.BoolVar(&asJSON, "json", false, "print one JSON job object per line (NDJSON) instead of a table")
	_ = cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(jobStates, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// printJobRow prints one job: a table row, or (table nil) a compact JSON line.
func printJobRow(out io.Writer, table *tabwriter.Writer, raw json.RawMessage) error {
	if table == nil {
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return fmt.Errorf("the server sent invalid JSON: %w", err)
		}
		buf.WriteByte('\n')
		_, err := out.Write(buf.Bytes())
		return err
	}
	var j struct {
		ID        int64  `json:"id"`
		Kind      string `json:"kind"`
		Key       string `json:"key"`
		State     string `json:"state"`
		Attempt   int    `json:"attempt"`
		CreatedAt string `json:"created_at"`
	}
	if err := json.Unmarshal(raw, &j); err != nil {
		return fmt.Errorf("the server sent a job the CLI cannot read: %w", err)
	}
	fmt.Fprintf(table, "%d\t%s\t%s\t%s\t%d\t%s\n", j.ID, cell(j.Kind), cell(j.Key), j.State, j.Attempt, cell(j.CreatedAt))
	return nil
}

// cell renders a value for a table: "-" when empty, quoted when it holds
// characters that would break the table (tabs, newlines, other controls).
func cell(s string) string {
	if s == "" {
		return "-"
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return strconv.Quote(s)
	}
	return s
}

func newJobsGetCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "get ID",
		Short:   "Print a job as JSON, with its error history",
		Example: `  herald jobs get 42`,
		Args:    cobra.ExactArgs(1),
		RunE:    jobAction(cf, http.MethodGet, ""),
	}
}

func newJobsRetryCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "retry ID",
		Short: "Run a discarded, cancelled or waiting job again, with fresh attempts",
		Long: `Run a discarded, cancelled or waiting job again now, with a fresh set of
attempts, and print it. A dead letter at the head of its key keeps its place;
any other job rejoins its key's line as if enqueued now. Running and completed
jobs cannot be retried (the server answers 409 wrong_state).`,
		Example: `  herald jobs retry 42`,
		Args:    cobra.ExactArgs(1),
		RunE:    jobAction(cf, http.MethodPost, "/retry"),
	}
}

func newJobsCancelCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job that has not started, or a dead letter blocking its key",
		Long: `Cancel a job that has not started, or a dead letter blocking its key, and
print it; the key's line then advances. Running and finished jobs cannot be
cancelled (the server answers 409 wrong_state).`,
		Example: `  herald jobs cancel 42`,
		Args:    cobra.ExactArgs(1),
		RunE:    jobAction(cf, http.MethodPost, "/cancel"),
	}
}

// parseJobID checks that s is a job id before it goes into a URL.
func parseJobID(s string) (string, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 {
		return "", fmt.Errorf("job id must be a positive integer, got %q", s)
	}
	return strconv.FormatInt(id, 10), nil
}

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Inspect ordering keys (the lines jobs of one key wait in)",
		Args:  cobra.NoArgs,
	}
	cf := newClientFlags(cmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "get KEY",
		Short: "Show a key's line: pending jobs, the head job and what the line waits on",
		Long: `Show a key's line as JSON: how many jobs are pending, the head job, and
what the line is waiting on: "ready", "running", "retry_at" (a retry is
due at retry_at), "scheduled" (the head runs at run_at), "blocked" (a dead
letter holds the key until it is retried or cancelled) or "empty".`,
		Example: `  herald keys get account-42`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client(cmd)
			if err != nil {
				return err
			}
			defer c.close()
			raw, err := c.doRaw(cmd.Context(), http.MethodGet, "/v1/keys/"+url.PathEscape(args[0]), nil, nil)
			if err != nil {
				return fmt.Errorf("key %q: %w", args[0], err)
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	})
	return cmd
}

func newKindsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kinds",
		Short: "Pause and resume job kinds",
		Args:  cobra.NoArgs,
	}
	cf := newClientFlags(cmd)
	toggle := func(action, short, long, example string) *cobra.Command {
		return &cobra.Command{
			Use:     action + " KIND",
			Short:   short,
			Long:    long,
			Example: example,
			Args:    cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := cf.client(cmd)
				if err != nil {
					return err
				}
				defer c.close()
				var res struct {
					Kind   string `json:"kind"`
					Paused bool   `json:"paused"`
				}
				if err := c.do(cmd.Context(), http.MethodPost, "/v1/kinds/"+url.PathEscape(args[0])+"/"+action, nil, nil, &res); err != nil {
					return fmt.Errorf("%s kind %q: %w", action, args[0], err)
				}
				word := "resumed"
				if res.Paused {
					word = "paused"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "kind %s %s\n", res.Kind, word)
				return nil
			},
		}
	}
	cmd.AddCommand(
		toggle("pause", "Stop starting jobs of a kind (running ones finish)",
			`Stop starting new jobs of a kind on the server. Running jobs finish;
enqueueing still works, and the jobs wait until the kind is resumed. The
pause lasts until resumed or until the server restarts.`,
			`  herald kinds pause process-event`),
		toggle("resume", "Start jobs of a paused kind again",
			`Start jobs of a paused kind again; jobs that waited start in per-key order.`,
			`  herald kinds resume process-event`),
	)
	return cmd
}
