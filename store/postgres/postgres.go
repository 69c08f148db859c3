// Package postgres is herald's PostgreSQL store (pgx/v5 with a pgxpool),
// for several herald nodes sharing one database.
//
// Per-key order lives in the database: a lines table holds each ordered
// key's head, and claims take only heads whose line is not running, with
// FOR NO KEY UPDATE SKIP LOCKED, so nodes never wait for each other to
// claim. Writes to a key's line (inserts, finishes, operator actions,
// rescue) first take a transaction-scoped advisory lock per key, always in
// the same (sorted) order, so concurrent nodes cannot deadlock on new keys.
//
// An engine cycle (Exchange) is one pipelined batch of a few set-based
// statements in one implicit transaction: one round trip and one commit,
// whatever the batch size.
package postgres

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heraldmq/herald/store"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// ErrBadSchema means Options.Schema (or ?schema=) is not a plain
// identifier.
var ErrBadSchema = errors.New("postgres: schema must match [a-z_][a-z0-9_]* (at most 63 characters)")

// Options tunes Open. The zero value is fine.
type Options struct {
	// Schema holds herald's tables. Defaults to the URL's ?schema=
	// parameter, else "herald". It is created if missing.
	Schema string
	// PollOnly turns off LISTEN/NOTIFY and named prepared statements, for
	// PgBouncer in transaction mode (which supports neither). Engines then
	// find other nodes' work by polling. Defaults to the URL's
	// ?poll_only=true, else false.
	PollOnly bool
	// MaxConns caps the pool. Defaults to the URL's pool_max_conns, else
	// 8: an engine writes from one loop, so more connections mostly serve
	// API reads.
	MaxConns int32
	// QueryTimeout bounds each call that arrives without a deadline of
	// its own (the engine's cycles, renewals, rescues), so a connection
	// that died silently (a failover that sent no reset) cannot hang a
	// node: the call fails, the connection is dropped, the engine retries.
	// Defaults to 30s.
	QueryTimeout time.Duration
	// Logger receives the driver's own logs (notification reconnects).
	// Defaults to discarding them.
	Logger *slog.Logger
}

// Store is the PostgreSQL driver. Create it with Open.
type Store struct {
	pool     *pgxpool.Pool
	connCfg  *pgx.ConnConfig // for the listener's dedicated connection
	timeout  time.Duration   // Options.QueryTimeout
	schema   string
	pollOnly bool
	log      *slog.Logger
	// lockSeed mixes the schema into advisory lock ids, so stores in other
	// schemas of the same database do not contend for the same keys.
	lockSeed int64
	channel  string // NOTIFY channel, per schema
	sql      statements

	repairMu   sync.Mutex
	lastRepair time.Time // RepairLines' last run from Rescue

	// claimedKeys holds the key of every job this store claimed and has not
	// yet been handed an outcome for, so an exchange locks a finished job's
	// key without asking the database for it (keys never change). An
	// outcome for a job claimed elsewhere (or before a restart) still
	// looks its key up.
	keysMu      sync.Mutex
	claimedKeys map[int64]string

	listeners listenHub // one LISTEN connection for every Listen call
}

var (
	_ store.Driver   = (*Store)(nil)
	_ store.Listener = (*Store)(nil)
	_ store.Elector  = (*Store)(nil)
)

var identRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Open connects to the database at rawURL (postgres://...), applies
// migrations and returns the store. herald-specific query parameters
// (schema, poll_only) are removed before the URL is handed to pgx.
func Open(ctx context.Context, rawURL string, opts Options) (*Store, error) {
	connURL, fromURL, err := splitURL(rawURL)
	if err != nil {
		return nil, err
	}
	opts.Schema = cmp.Or(opts.Schema, fromURL.Schema, "herald")
	opts.PollOnly = opts.PollOnly || fromURL.PollOnly
	if !identRe.MatchString(opts.Schema) {
		return nil, fmt.Errorf("%w: %q", ErrBadSchema, opts.Schema)
	}
	cfg, err := pgxpool.ParseConfig(connURL)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse url: %w", err)
	}
	if !strings.Contains(connURL, "pool_max_conns") {
		cfg.MaxConns = cmp.Or(opts.MaxConns, 8)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second // an unreachable host must not hang a node
	}
	if opts.PollOnly {
		// PgBouncer in transaction mode hands each transaction to any
		// server connection: named statements would not be there.
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := fnv.New64a()
	h.Write([]byte(opts.Schema))
	s := &Store{
		connCfg:  cfg.ConnConfig.Copy(),
		timeout:  cmp.Or(opts.QueryTimeout, 30*time.Second),
		schema:   opts.Schema,
		pollOnly: opts.PollOnly,
		log:      opts.Logger,
		lockSeed: int64(h.Sum64()), //nolint:gosec // the bits are the seed
		channel:  "herald_" + opts.Schema,

		claimedKeys: map[int64]string{},
	}
	s.sql = render(opts.Schema)
	s.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", wrap(err))
	}
	if err := s.migrate(ctx); err != nil {
		s.pool.Close()
		return nil, err
	}
	return s, nil
}

// Schema is the schema holding the store's tables.
func (s *Store) Schema() string { return s.schema }

// PreferredLoops is 2: one store loop keeps one backend busy, a core of
// the database server at full load (store.ParallelLoops); a second lets a
// node use a second core. More gave less on a 2-core machine (see
// docs/benchmarks.md), and other nodes add their own loops.
func (s *Store) PreferredLoops() int { return 2 }

// urlOptions are the herald parameters of a store URL.
type urlOptions struct {
	Schema   string
	PollOnly bool
}

// splitURL removes herald's parameters from a store URL.
func splitURL(raw string) (string, urlOptions, error) {
	var o urlOptions
	u, err := url.Parse(raw)
	if err != nil {
		return "", o, fmt.Errorf("postgres: parse url: %w", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return "", o, fmt.Errorf("postgres: url scheme %q, want postgres://", u.Scheme)
	}
	q := u.Query()
	o.Schema = q.Get("schema")
	if v := q.Get("poll_only"); v != "" {
		if o.PollOnly, err = strconv.ParseBool(v); err != nil {
			return "", o, fmt.Errorf("postgres: poll_only=%q: %w", v, err)
		}
	}
	q.Del("schema")
	q.Del("poll_only")
	u.RawQuery = q.Encode()
	return u.String(), o, nil
}

// IsURL reports whether a --store value names a PostgreSQL database.
func IsURL(s string) bool {
	lower := strings.ToLower(s)
	return strings.HasPrefix(lower, "postgres://") || strings.HasPrefix(lower, "postgresql://")
}

// Close closes the pool. Calls after Close fail.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	return wrap(s.pool.Ping(ctx))
}

// DropSchema drops the store's schema and everything in it, for benchmarks
// and tests that ran on a fresh schema.
func (s *Store) DropSchema(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{s.schema}.Sanitize()+` CASCADE`)
	return wrap(err)
}

// migrate applies the embedded migrations not yet recorded in
// schema_migrations, all in one transaction under an advisory lock, so
// nodes starting together migrate once and never see half a schema.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return err
	}
	slices.Sort(names)
	schema := pgx.Identifier{s.schema}.Sanitize()
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, s.lockSeed^0x6d696772); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+schema); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+schema+`.schema_migrations (
			version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT version FROM `+schema+`.schema_migrations`)
		if err != nil {
			return err
		}
		applied, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, name := range names {
			version := strings.TrimSuffix(path.Base(name), ".sql")
			if slices.Contains(applied, version) {
				continue
			}
			body, err := migrationFS.ReadFile(name)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, strings.ReplaceAll(string(body), "{{schema}}", schema)); err != nil {
				return fmt.Errorf("migration %s: %w", version, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+schema+`.schema_migrations (version) VALUES ($1)`, version); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("postgres: migrate schema %s: %w", s.schema, wrap(err))
	}
	return nil
}

// bound gives ctx the store's query timeout unless it has a deadline.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

// retryable reports errors after which a transaction can simply run again:
// serialization failures, deadlocks, and an idempotency key taken by a
// concurrent insert (the rerun finds the winner's job).
func retryable(err error) bool {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pe.Code {
		case "40001", "40P01":
			return true
		case "23505":
			return pe.ConstraintName == "jobs_idempotency"
		}
	}
	return false
}

// withRetry runs fn, again after transient conflicts, up to a few times.
func withRetry(ctx context.Context, fn func() error) error {
	var err error
	for attempt := range 8 {
		if err = fn(); err == nil || !retryable(err) {
			return err
		}
		t := time.NewTimer(time.Duration(attempt+1) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
	return err
}

// wrap marks errors that mean "the database cannot be reached or cannot
// write right now" with store.ErrUnavailable, so the API answers 503 and
// the engine retries.
func wrap(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		return err
	}
	if unavailable(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// commitUnknown reports whether a batch (one implicit transaction) failed
// in a way that leaves its commit in doubt: the request may have reached
// the server, and no answer came back. A server error means the
// transaction rolled back; a failed connect or a request pgx knows it
// never sent means nothing ran.
func commitUnknown(err error) bool {
	if _, ok := errors.AsType[*pgconn.PgError](err); ok {
		return false
	}
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return false
	}
	return !pgconn.SafeToRetry(err) && !strings.Contains(err.Error(), "closed pool")
}

func unavailable(err error) bool {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			strings.HasPrefix(pe.Code, "53"),  // insufficient resources (disk full, too many connections)
			strings.HasPrefix(pe.Code, "57P"), // admin shutdown, crash shutdown, cannot connect now
			pe.Code == "25006":                // read-only transaction: a failover's old primary
			return true
		}
		return false
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) ||
		errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "closed pool") ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "unexpected EOF")
}
