package sqlite

import (
	"context"
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
		"demote":   {demoteSQL, []any{`[["k", 5]]`}},
		"promote":  {promoteSQL, []any{`["k"]`}},
		"complete": {completeSQL, []any{`[[1, 2]]`, 5}},
		"claim":    {claimSQL, []any{"kind", 5, `[1, 2]`, 10}},
		"nextRun":  {nextRunSQL, []any{"kind"}},
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
		rows.Close()
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
