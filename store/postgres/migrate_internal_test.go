package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// TestMigrateFromFirstSchema: a schema made by the first migration alone,
// with jobs in line, is brought up to date when a store opens it, and its
// jobs then run in order through the current statements.
func TestMigrateFromFirstSchema(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	_, opts, err := splitURL(u)
	if err != nil {
		t.Fatal(err)
	}
	schema := pgx.Identifier{opts.Schema}.Sanitize()
	conn, err := pgx.Connect(t.Context(), pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background()) //nolint:errcheck // test connection
	first, err := migrationFS.ReadFile("migrations/0001_jobs.sql")
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Minute).UTC().Truncate(time.Microsecond)
	for _, sql := range []string{
		`CREATE SCHEMA ` + schema,
		strings.ReplaceAll(string(first), "{{schema}}", schema),
		`CREATE TABLE ` + schema + `.schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
		`INSERT INTO ` + schema + `.schema_migrations (version) VALUES ('0001_jobs')`,
		`INSERT INTO ` + schema + `.jobs (id, kind, key, payload, state, max_attempts, run_at, due_at, created_at)
			VALUES (1, 'k', 'key', '', 1, 3, $1, $1, $1), (2, 'k', 'key', '', 1, 3, $1, $1, $1)`,
		`INSERT INTO ` + schema + `.lines (key, head_id, kind, run_at, due_at) VALUES ('key', 1, 'k', $1, $1)`,
		`SELECT setval(pg_get_serial_sequence('` + schema + `.jobs', 'id'), 2)`,
	} {
		var args []any
		if strings.Contains(sql, "$1") {
			args = []any{base}
		}
		if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	s, err := Open(t.Context(), u, Options{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var def string
	if err := conn.QueryRow(t.Context(), `SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'jobs_line'`,
		opts.Schema).Scan(&def); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(def, "ANY") || strings.Contains(def, "< 4") {
		t.Errorf("jobs_line after migrating: %s; want it without running jobs", def)
	}

	now := time.Now()
	claim := &store.ClaimParams{Now: now, Owner: "n", LeaseUntil: now.Add(time.Hour),
		Limits: []store.KindLimit{{Kind: "k", Max: 5}}, Max: 5}
	got, err := s.Claim(t.Context(), *claim)
	if err != nil || len(got) != 1 || got[0].ID != 1 {
		t.Fatalf("first claim = %v, %v; want job 1", got, err)
	}
	res, err := s.Exchange(t.Context(), store.ExchangeParams{Now: now, Claim: claim, Finishes: []store.FinishParams{
		{ID: 1, Owner: "n", LeaseToken: got[0].LeaseToken, Outcome: store.OutcomeCompleted}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Finished) != 1 || res.Finished[0].Fenced || len(res.Claimed) != 1 || res.Claimed[0].ID != 2 {
		t.Fatalf("finish and claim = %+v, %+v; want job 1 done and job 2 claimed", res.Finished, res.Claimed)
	}
	line, err := s.Line(t.Context(), "key")
	if err != nil {
		t.Fatal(err)
	}
	if line.Head == nil || line.Head.ID != 2 || line.Pending != 1 {
		t.Errorf("line = head %v, %d pending; want job 2 running, 1 pending", line.Head, line.Pending)
	}
}
