package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/sqlite"
	"github.com/heraldmq/herald/store/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	conformance(t, sqlite.Options{})
}

// Without the line memo every line is read from the database.
func TestConformanceWithoutLineMemo(t *testing.T) {
	t.Parallel()
	conformance(t, sqlite.Options{LineMemoMiB: -1})
}

func conformance(t *testing.T, opts sqlite.Options) {
	t.Helper()
	storetest.Exercise(t, func(t *testing.T) store.Driver {
		t.Helper()
		s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "herald.db"), opts)
		if err != nil {
			t.Fatalf("sqlite.Open: %v", err)
		}
		// The suite's Close test closes the store itself; a second Close
		// only reports that the lock file is already closed.
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
