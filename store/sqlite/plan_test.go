package sqlite

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestHotQueriesUseIndexes guards throughput: a hot-path statement that
// scans the jobs table turns O(1) work into O(backlog).
func TestHotQueriesUseIndexes(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	for name, q := range map[string]struct {
		sql  string
		args []any
	}{
		"complete":      {completeSQL, []any{`[[1, 2]]`, 5}},
		"nextInLine":    {nextInLineSQL, []any{7, 5, 1}},
		"dropLine":      {dropLineSQL, []any{7}},
		"lineHead":      {lineHeadSQL, []any{7}},
		"moveHead":      {moveHeadSQL, []any{7, 1, "kind", 5}},
		"claimLines":    {claimLinesSQL, []any{"kind", 5, 10}},
		"markRunning":   {markRunningSQL, []any{`[7]`}},
		"claimUnord":    {claimUnorderedSQL, []any{"kind", 5, `[1]`, 10}},
		"nextLine":      {nextLineRunSQL, []any{"kind"}},
		"nextUnordered": {nextUnorderedRunSQL, []any{"kind", `[1]`}},
		"retry":         {retrySQL, []any{1, 2, 3, 4, "m", "t"}},
		"getJob":        {selectJob + ` WHERE j.id = ?`, []any{1}},
	} {
		rows, err := s.writer.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q.sql, q.args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(plan) == 0 {
			t.Fatalf("%s: empty plan", name)
		}
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN ") && !strings.Contains(step, "VIRTUAL TABLE") {
				t.Errorf("%s scans the table:\n%s", name, strings.Join(plan, "\n"))
			}
		}
	}
}
