package postgres_test

import (
	"testing"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres"
	"github.com/heraldmq/herald/store/postgres/pgtest"
	"github.com/heraldmq/herald/store/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Exercise(t, func(t *testing.T) store.Driver {
		t.Helper()
		return openTest(t)
	})
}

// TestConformancePollOnly runs the suite as behind PgBouncer in
// transaction mode: unnamed statements (text-format parameters and
// results) and no notifications.
func TestConformancePollOnly(t *testing.T) {
	t.Parallel()
	storetest.Exercise(t, func(t *testing.T) store.Driver {
		t.Helper()
		s, err := postgres.Open(t.Context(), pgtest.SchemaURL(t), postgres.Options{MaxConns: 4, PollOnly: true})
		if err != nil {
			t.Fatalf("postgres.Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// openTest opens a store on a fresh schema of its own, dropped after t.
func openTest(t *testing.T) *postgres.Store {
	t.Helper()
	u := pgtest.SchemaURL(t)
	s, err := postgres.Open(t.Context(), u, postgres.Options{MaxConns: 4})
	if err != nil {
		t.Fatalf("postgres.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
