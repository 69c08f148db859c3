package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heraldmq/herald/store/postgres/pgtest"
	"github.com/heraldmq/herald/store/sqlite"
)

func TestMigrate(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		// args gets the test's temp dir; wantPath is relative to it.
		args     func(dir string) []string
		wantPath string
		wantErr  string
	}{
		{name: "data dir", args: func(dir string) []string { return []string{"--data-dir", filepath.Join(dir, "data")} }, wantPath: "data/herald.db"},
		{name: "store file", args: func(dir string) []string { return []string{"--store", filepath.Join(dir, "jobs.db")} }, wantPath: "jobs.db"},
		{name: "postgres bad schema", args: func(string) []string { return []string{"--store", "postgres://localhost/herald?schema=Bad-Name"} },
			wantErr: "schema must match"},
		{name: "both", args: func(dir string) []string { return []string{"--store", dir + "/a.db", "--data-dir", dir} },
			wantErr: "[data-dir store] were all set"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := append([]string{"migrate"}, tt.args(dir)...)
			for run := 1; run <= 2; run++ { // the second run finds the schema current
				out, _, err := execCLI(t, "", args...)
				if tt.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatalf("migrate (run %d): %v", run, err)
				}
				path := filepath.Join(dir, tt.wantPath)
				want := "store: " + path + " (SQLite)\nschema: current (all migrations applied)\n"
				if out != want {
					t.Errorf("migrate printed %q, want %q", out, want)
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("no database at %s: %v", path, err)
				}
			}
		})
	}
}

// A store held by a running herald is reported as such.
func TestMigrateLocked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "herald.db")
	s, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	_, _, err = execCLI(t, "", "migrate", "--store", path)
	if err == nil || !strings.Contains(err.Error(), "in use by another herald process") || !strings.Contains(err.Error(), "stop herald serve first") {
		t.Fatalf("error = %v, want one saying the store is in use", err)
	}
}

// herald migrate creates and migrates a PostgreSQL schema; a second run
// finds it current.
func TestMigratePostgres(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	for run := 1; run <= 2; run++ {
		out, _, err := execCLI(t, "", "migrate", "--store", u)
		if err != nil {
			t.Fatalf("migrate (run %d): %v", run, err)
		}
		if !strings.Contains(out, "(PostgreSQL, schema herald_test_") || !strings.Contains(out, "schema: current") {
			t.Errorf("migrate printed %q", out)
		}
	}
}
