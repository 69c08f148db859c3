package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/heraldmq/herald/internal/config"
	"github.com/heraldmq/herald/store/postgres"
	"github.com/heraldmq/herald/store/sqlite"
)

func newMigrateCmd() *cobra.Command {
	var dataDir, storePath string
	lookupEnv := os.LookupEnv
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create the store or bring its schema up to date",
		Long: `Create the store or bring its schema up to date, then exit.

The store is the one herald serve would use: herald.db in --data-dir
(default $HERALD_DATA_DIR, else ./herald-data), or the SQLite file or
PostgreSQL URL given with --store (default $HERALD_STORE). herald serve
applies the same migrations when it starts, so this is only needed to
prepare a store ahead of time or to check one. A SQLite store cannot be
migrated while herald serve holds it; a PostgreSQL one can (migrations run
under an advisory lock, so nodes starting together migrate once).`,
		Example: `  herald migrate --data-dir /var/lib/herald
  herald migrate --store ./jobs.db
  herald migrate --store 'postgres://herald@db:5432/herald?schema=herald'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !flagChanged(cmd, "data-dir") && !flagChanged(cmd, "store") {
				if v, ok := lookupEnv("HERALD_STORE"); ok && v != "" {
					storePath = v
				} else if v, ok := lookupEnv("HERALD_DATA_DIR"); ok && v != "" {
					dataDir = v
				}
			}
			path := storePath
			if path == "" {
				path = filepath.Join(dataDir, "herald.db")
			}
			out := cmd.OutOrStdout()
			if postgres.IsURL(path) {
				s, err := postgres.Open(cmd.Context(), path, postgres.Options{})
				if err != nil {
					return fmt.Errorf("migrate: %w", err)
				}
				fmt.Fprintf(out, "store: %s (PostgreSQL, schema %s)\n", config.Config{Store: path}.Redacted().Store, s.Schema())
				fmt.Fprintln(out, "schema: current (all migrations applied)")
				return s.Close()
			}
			if abs, err := filepath.Abs(path); err == nil {
				path = abs
			}
			s, err := sqlite.Open(cmd.Context(), path, sqlite.Options{})
			if err != nil {
				if errors.Is(err, sqlite.ErrLocked) {
					return fmt.Errorf("%w; stop herald serve first (it applies migrations itself when it starts)", err)
				}
				return fmt.Errorf("migrate %s: %w", path, err)
			}
			if err := s.Close(); err != nil {
				return fmt.Errorf("close %s: %w", path, err)
			}
			fmt.Fprintf(out, "store: %s (SQLite)\n", path)
			fmt.Fprintln(out, "schema: current (all migrations applied)")
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./herald-data", "directory of the embedded store (herald.db); env HERALD_DATA_DIR")
	cmd.Flags().StringVar(&storePath, "store", "", "SQLite file or postgres:// URL to migrate instead of --data-dir; env HERALD_STORE")
	cmd.MarkFlagsMutuallyExclusive("data-dir", "store")
	_ = cmd.MarkFlagDirname("data-dir")
	return cmd
}
