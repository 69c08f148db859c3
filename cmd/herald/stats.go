package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newStatsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show job counts by state and kind, and the server's counters",
		Long: `Show what a running herald holds and has done: jobs by kind and state (from
the store, fresh), keys ready to run, the age of the oldest pending job, and
counters since the server started (enqueued, started, completed, failed,
discarded, running now). Paused kinds are marked.

With --json the API's answer (GET /v1/stats) is printed as it came.`,
		Example: `  herald stats
  herald stats --json | jq .by_state`,
		Args: cobra.NoArgs,
	}
	cf := newClientFlags(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := cf.client(cmd)
		if err != nil {
			return err
		}
		defer c.close()
		raw, err := c.doRaw(cmd.Context(), http.MethodGet, "/v1/stats", nil, nil)
		if err != nil {
			return fmt.Errorf("stats: %w", err)
		}
		if asJSON {
			return printJSON(cmd.OutOrStdout(), raw)
		}
		var st statsAnswer
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("stats: cannot decode the answer: %w", err)
		}
		return st.print(cmd.OutOrStdout())
	}
	return cmd
}

// statsAnswer is the part of GET /v1/stats the table shows.
type statsAnswer struct {
	ByState                 map[string]int64            `json:"by_state"`
	ByKind                  map[string]map[string]int64 `json:"by_kind"`
	ReadyKeys               int64                       `json:"ready_keys"`
	OldestPendingAgeSeconds float64                     `json:"oldest_pending_age_seconds"`
	Counters                struct {
		Enqueued  int64 `json:"enqueued"`
		Started   int64 `json:"started"`
		Completed int64 `json:"completed"`
		Failed    int64 `json:"failed"`
		Discarded int64 `json:"discarded"`
		Running   int   `json:"running"`
		ByKind    map[string]struct {
			Paused bool `json:"paused"`
		} `json:"by_kind"`
	} `json:"counters"`
}

// print renders the answer as a table of kinds × states with a total row,
// then a summary of keys and counters.
func (st *statsAnswer) print(out io.Writer) error {
	// Kinds in the store and registered kinds (which may hold no jobs yet).
	kinds := slices.Sorted(maps.Keys(st.ByKind))
	for k := range st.Counters.ByKind {
		if _, ok := st.ByKind[k]; !ok {
			kinds = append(kinds, k)
		}
	}
	slices.Sort(kinds)

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := []string{"KIND"}
	for _, s := range jobStates {
		header = append(header, strings.ToUpper(s))
	}
	fmt.Fprintln(tw, strings.Join(append(header, "PAUSED"), "\t")+"\t")
	row := func(name string, counts map[string]int64, paused string) {
		cells := []string{name}
		for _, s := range jobStates {
			cells = append(cells, strconv.FormatInt(counts[s], 10))
		}
		fmt.Fprintln(tw, strings.Join(append(cells, paused), "\t")+"\t")
	}
	for _, k := range kinds {
		paused := "no"
		if st.Counters.ByKind[k].Paused {
			paused = "yes"
		}
		row(cell(k), st.ByKind[k], paused)
	}
	row("total", st.ByState, "")
	if err := tw.Flush(); err != nil {
		return err
	}

	age := time.Duration(st.OldestPendingAgeSeconds * float64(time.Second)).Round(time.Millisecond)
	fmt.Fprintf(out, "\nready keys: %d   oldest pending: %s   running now: %d\n", st.ReadyKeys, age, st.Counters.Running)
	c := st.Counters
	_, err := fmt.Fprintf(out, "since the server started: enqueued %d, started %d, completed %d, failed %d, discarded %d\n",
		c.Enqueued, c.Started, c.Completed, c.Failed, c.Discarded)
	return err
}
