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
		"complete":      {completeRows.sqls[1], []any{5, 1, 2}},
		"nextOne":       {nextOneSQL, []any{`[[7, 5, 1]]`}},
		"nextMany":      {nextManySQL, []any{`[[7, 5, 1]]`}},
		"dropLines":     {dropLinesSQL, []any{`[7]`}},
		"moveHeads":     {moveHeads.sqls[1], []any{7, 1, "kind", 5}},
		"lineHeads":     {lineHeadsSQL, []any{`[7]`}},
		"fold":          {foldRows.sqls[1], []any{1, 1, 2, 3}},
		"moveHead":      {moveHeadSQL, []any{7, 1, "kind", 5}},
		"claimLines":    {claimLinesSQL, []any{"kind", 5}},
		"markRunning":   {markRunningSQL, []any{`[7]`}},
		"claimUnord":    {claimUnorderedSQL, []any{"kind", 5, `[1]`}},
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
		// Scanning a statement's own inputs (json_each, a VALUES list, a
		// CTE over them, or a subquery's rows) is fine; scanning a table
		// is not.
		inputs := map[string]bool{"SCAN CONSTANT ROW": true}
		for _, step := range plan {
			for _, prefix := range []string{"MATERIALIZE ", "CO-ROUTINE "} {
				if name, ok := strings.CutPrefix(step, prefix); ok {
					inputs["SCAN "+name] = true
				}
			}
		}
		for _, step := range plan {
			// Claims read without LIMIT and stop early: a sort would
			// read every ready row first.
			if strings.Contains(step, "TEMP B-TREE") {
				t.Errorf("%s sorts instead of reading in index order:\n%s", name, strings.Join(plan, "\n"))
			}
			if strings.HasPrefix(step, "SCAN ") && !strings.Contains(step, "VIRTUAL TABLE") && !inputs[step] {
				t.Errorf("%s scans the table:\n%s", name, strings.Join(plan, "\n"))
			}
		}
	}
}
