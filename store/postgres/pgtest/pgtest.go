// Package pgtest gives tests a PostgreSQL database to run on: a fresh
// schema per test, dropped afterwards. When no server answers, tests skip,
// unless HERALD_REQUIRE_SERVICES=1 (as in CI), where they fail.
//
// The server is $HERALD_POSTGRES_URL, else 127.0.0.1:5432 with trust
// authentication, database test, user postgres (or root).
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	once    sync.Once
	baseURL string
	errBase error
)

// candidates are the servers tried, in order.
func candidates() []string {
	if u := os.Getenv("HERALD_POSTGRES_URL"); u != "" {
		return []string{u}
	}
	return []string{
		"postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
		"postgres://root@127.0.0.1:5432/test?sslmode=disable",
	}
}

// URL returns the URL of a reachable server, skipping (or, with
// HERALD_REQUIRE_SERVICES=1, failing) the test when there is none.
func URL(tb testing.TB) string {
	tb.Helper()
	once.Do(func() {
		for _, u := range candidates() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			conn, err := pgx.Connect(ctx, u)
			if err == nil {
				err = conn.Ping(ctx)
				_ = conn.Close(ctx)
			}
			cancel()
			if err == nil {
				baseURL, errBase = u, nil
				return
			}
			errBase = err
		}
	})
	if baseURL == "" {
		msg := fmt.Sprintf("PostgreSQL not reachable (%v); set HERALD_POSTGRES_URL or start the server", errBase)
		if os.Getenv("HERALD_REQUIRE_SERVICES") == "1" {
			tb.Fatal(msg + " (HERALD_REQUIRE_SERVICES=1)")
		}
		tb.Skip(msg)
	}
	return baseURL
}

// SchemaURL returns the server's URL with ?schema= naming a fresh schema,
// which is dropped when the test ends. The store creates it when opened.
func SchemaURL(tb testing.TB) string {
	tb.Helper()
	base := URL(tb)
	schema := NewSchemaName()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := DropSchema(ctx, base, schema); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return WithSchema(base, schema)
}

var schemas atomic.Int64

// NewSchemaName returns a schema name nobody uses yet: the time, the
// process and a counter tell apart parallel tests and test binaries.
func NewSchemaName() string {
	return fmt.Sprintf("herald_test_%d_%d_%d", time.Now().UnixMilli(), os.Getpid(), schemas.Add(1))
}

// WithSchema sets the ?schema= parameter of a store URL.
func WithSchema(base, schema string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// DropSchema drops schema and everything in it.
func DropSchema(ctx context.Context, base, schema string) error {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return err
	}
	defer conn.Close(ctx) //nolint:errcheck // closing after the drop
	_, err = conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
	return err
}
