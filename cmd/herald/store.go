package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres"
	"github.com/heraldmq/herald/store/sqlite"
)

// openStore opens the store a --store value names: a postgres:// URL or a
// SQLite file path. Both apply their migrations when opened.
func openStore(ctx context.Context, spec string, log *slog.Logger) (store.Driver, error) {
	if postgres.IsURL(spec) {
		s, err := postgres.Open(ctx, spec, postgres.Options{Logger: log})
		if err != nil {
			return nil, fmt.Errorf("open PostgreSQL store: %w", err)
		}
		return s, nil
	}
	s, err := sqlite.Open(ctx, spec, sqlite.Options{})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", spec, err)
	}
	return s, nil
}
