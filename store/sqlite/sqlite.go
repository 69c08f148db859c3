// Package sqlite is herald's default store: an embedded SQLite database
// (modernc.org/sqlite, pure Go) in WAL mode. A transaction is reported
// committed only once its WAL frames are flushed to disk (walsync.go), so
// it survives a crash or power loss.
//
// One process owns a database file at a time (an advisory lock enforces it),
// so which jobs are running is kept in that process's memory (claims.go):
// after a crash, jobs that were running are simply pending again.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/heraldmq/herald/store"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// ErrLocked means another process holds the database file.
var ErrLocked = errors.New("sqlite: database is in use by another herald process")

// ErrPageSize means Options.PageSize is not a power of two from 512 to 65536.
var ErrPageSize = errors.New("sqlite: invalid page size")

// Store is the SQLite driver. Create it with Open.
type Store struct {
	path   string
	lock   *os.File
	writer *sql.DB // one connection: SQLite has a single writer anyway
	reader *sql.DB // WAL lets readers run beside the writer
	ckpt   checkpointer
	wal    walSyncer

	exchangeMu sync.Mutex
	claims     claimTable
	memo       lineMemo // guarded by exchangeMu
	done       doneLog  // completions not yet written into their rows
	// foldAt and foldChunk: see done.go.
	foldAt, foldChunk int

	stmts map[string]*sql.Stmt // hot statements, prepared once on the writer
	// nextLineRun and nextUnorderedRun are NextRunAt's statements,
	// prepared once on the readers:
	// an idle engine asks after every cycle.
	nextLineRun, nextUnorderedRun *sql.Stmt

	// lastID is the highest job id handed out. Ids are assigned here, not
	// by SQLite, so a batch is written as multi-row inserts without
	// reading ids back. Guarded by exchangeMu (all inserts run in Exchange).
	lastID int64
	// rowidIsLastID says the table's highest rowid is lastID, so the rowid
	// SQLite would pick for a new row (the highest plus one) is nextID's:
	// inserts then leave the id out, which spares SQLite a statement
	// journal (see insertRowsSQL). A rolled-back insert or a prune that
	// deletes the newest job breaks it; a committed insert with explicit
	// ids restores it. Guarded by exchangeMu.
	rowidIsLastID bool
}

// insertedAny says whether a cycle wrote a new row (rather than only
// returning jobs that held their idempotency keys).
func insertedAny(res []store.InsertResult) bool {
	for _, r := range res {
		if !r.Existing {
			return true
		}
	}
	return false
}

// nextID hands out the next job id. Ids of a rolled-back transaction are
// not reused; the gap is harmless.
func (s *Store) nextID() int64 {
	s.lastID++
	return s.lastID
}

// loadLastID starts ids after the highest one on disk or ever pruned.
func (s *Store) loadLastID(ctx context.Context) error {
	var maxRowid int64
	err := s.writer.QueryRowContext(ctx, `SELECT coalesce((SELECT max(id) FROM herald_jobs), 0),
		coalesce((SELECT value FROM herald_meta WHERE name = 'id_floor'), 0)`).Scan(&maxRowid, &s.lastID)
	if err != nil {
		return fmt.Errorf("sqlite: read last job id: %w", wrap(err))
	}
	s.lastID = max(s.lastID, maxRowid)
	s.rowidIsLastID = maxRowid == s.lastID
	return nil
}

// repairLines advances line rows left pointing at finished jobs: the
// previous process handed their next jobs off in memory and stopped before
// it rewrote the rows. Each moves to the first unfinished job after it.
func (s *Store) repairLines(ctx context.Context) error {
	rows, err := s.writer.QueryContext(ctx, `SELECT l.kh, j.due_at, j.id
		FROM herald_lines l JOIN herald_jobs j ON j.id = l.head_id
		WHERE l.blocked = 0 AND j.state >= 4`)
	if err != nil {
		return fmt.Errorf("sqlite: repair lines: %w", err)
	}
	var stale []finishedHead
	for rows.Next() {
		var h finishedHead
		if err := rows.Scan(&h.kh, &h.dueUS, &h.id); err != nil {
			rows.Close()
			return fmt.Errorf("sqlite: repair lines: %w", err)
		}
		stale = append(stale, h)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("sqlite: repair lines: %w", err)
	}
	if len(stale) == 0 {
		return nil
	}
	err = s.inLineTx(ctx, func(tx *sql.Tx) error {
		w := &lineWriter{ctx: ctx, tx: tx, store: s, claims: &s.claims, now: time.Now()}
		defer w.close()
		w.advance = stale
		return w.flush()
	})
	if err != nil {
		return fmt.Errorf("sqlite: repair lines: %w", err)
	}
	return nil
}

const defaultPageSize = 4096

// create gives a database that does not exist yet its page size, and
// returns the page size of the database at path. The size must be set
// before anything is written, and the connection options' journal_mode=WAL
// would write first (the driver sorts the pragmas).
func create(ctx context.Context, path string, pageSize int) (int, error) {
	if size, err := headerPageSize(path); err != nil || size > 0 {
		return size, err
	}
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		return 0, fmt.Errorf("sqlite: create: %w", err)
	}
	for _, q := range []string{fmt.Sprintf("PRAGMA page_size = %d", pageSize), "PRAGMA journal_mode = WAL"} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return 0, errors.Join(fmt.Errorf("sqlite: create: %w", err), db.Close())
		}
	}
	return pageSize, db.Close()
}

// headerPageSize reads the page size from the database file's header: 0
// when there is no database yet.
func headerPageSize(path string) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("sqlite: %w", err)
	}
	defer f.Close() //nolint:errcheck // read only: nothing to lose
	var h [18]byte
	if _, err := io.ReadFull(f, h[:]); errors.Is(err, io.EOF) {
		return 0, nil // an empty file: SQLite takes it as a new database
	} else if err != nil {
		return 0, fmt.Errorf("sqlite: read %s: %w", path, err)
	}
	if string(h[:16]) != "SQLite format 3\x00" {
		return 0, fmt.Errorf("sqlite: %s is not an SQLite database", path)
	}
	size := int(binary.BigEndian.Uint16(h[16:]))
	if size == 1 {
		size = 65536
	}
	return size, nil
}

// prepareHot prepares the hot-path statements once on the writer:
// re-preparing them in every transaction cost more than running them. It
// runs in Open, before any transaction holds the writer's one connection.
func (s *Store) prepareHot(ctx context.Context) error {
	s.stmts = map[string]*sql.Stmt{}
	for _, q := range hotStatements {
		st, err := s.writer.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("sqlite: prepare: %w", err)
		}
		s.stmts[q] = st
	}
	return nil
}

var _ store.Driver = (*Store)(nil)

// Options tunes Open. The zero value is fine.
type Options struct {
	// CacheMiB is SQLite's page cache per connection. Defaults to 64.
	CacheMiB int
	// LineMemoMiB bounds the memory that remembers the jobs queued in
	// lines this process created, so that advancing such a line needs no
	// query (see memo.go). Defaults to 32; negative disables it.
	LineMemoMiB int
	// Readers is the number of read connections. Defaults to 4.
	Readers int
	// BusyTimeout is how long a write waits for a lock another process
	// holds (a backup, the sqlite3 shell) before failing with
	// store.ErrUnavailable. herald is the only writer of its database (the
	// advisory lock keeps other herald processes out), so only outside
	// tools contend; a write that fails is retried by the engine, and an
	// enqueue answers 503 with Retry-After. Waiting longer than an HTTP
	// client would only turns those 503s into client timeouts, and an
	// enqueue may wait twice (its batch, then alone). Defaults to 2s.
	BusyTimeout time.Duration
	// PageSize is the page size, in bytes, of a database Open creates (a
	// power of two from 512 to 65536; an existing database keeps its own).
	// Defaults to 4096. A cycle writes each page it dirties to the WAL
	// once, and inserts spread over many keys dirty about one page of the
	// line index per key whatever its size, so floods of enqueues over a
	// few thousand keys write fewer bytes per job with larger pages: 16384
	// took 17 % less CPU for batch enqueues. But reads and writes that hop
	// between many keys move whole pages: with 16384, draining 5,000,000
	// jobs over 1,000,000 keys took 70 % more CPU and went half as fast. With
	// pages above 4096 set CacheMiB lower too (32 for 16384): modernc's C
	// heap spends more than a page's size on each cached large page.
	PageSize int
	// LockWait is how long Open waits for the database's advisory lock
	// before failing with ErrLocked. Not zero because a lock just released
	// may still be held for a moment by a forked child of the process that
	// held it: a fork copies the lock's descriptor, and only the child's
	// exec closes it (O_CLOEXEC). A second live herald still fails, after
	// this long. Defaults to 1s.
	LockWait time.Duration
}

// Open opens (creating if needed) the database at path, applies migrations
// and rescues jobs left running by a previous process.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if opts.CacheMiB <= 0 {
		opts.CacheMiB = 64
	}
	if opts.LineMemoMiB == 0 {
		opts.LineMemoMiB = 32
	}
	if opts.Readers <= 0 {
		opts.Readers = 4
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = 2 * time.Second
	}
	if opts.LockWait <= 0 {
		opts.LockWait = time.Second
	}
	if opts.PageSize == 0 {
		opts.PageSize = defaultPageSize
	}
	if opts.PageSize < 512 || opts.PageSize > 65536 || opts.PageSize&(opts.PageSize-1) != 0 {
		return nil, fmt.Errorf("%w: %d (want a power of two from 512 to 65536)", ErrPageSize, opts.PageSize)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("sqlite: create data directory: %w", err)
		}
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open lock file: %w", err)
	}
	if err := flockWithin(ctx, lock, opts.LockWait); err != nil {
		return nil, errors.Join(fmt.Errorf("%w (%s)", ErrLocked, path), lock.Close())
	}
	pageSize, err := create(ctx, path, opts.PageSize)
	if err != nil {
		return nil, errors.Join(err, lock.Close())
	}
	s := &Store{path: path, lock: lock}
	s.claims.init()
	s.done.init()
	s.foldAt, s.foldChunk = defaultFoldAt, defaultFoldChunk
	s.memo.init(int64(max(opts.LineMemoMiB, 0)) << 20)
	pragmas := fmt.Sprintf("_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(%d)&_pragma=cache_size(-%d)&_pragma=temp_store(MEMORY)&_pragma=wal_autocheckpoint(%d)",
		opts.BusyTimeout.Milliseconds(), opts.CacheMiB*1024, backstopBytes/pageSize)
	s.writer, err = sql.Open("sqlite", "file:"+path+"?"+pragmas+"&_txlock=immediate")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open: %w", err), s.Close())
	}
	s.writer.SetMaxOpenConns(1)
	s.writer.SetMaxIdleConns(1)
	s.writer.SetConnMaxLifetime(0)
	s.writer.SetConnMaxIdleTime(0)
	// The writer does not flush its commits (synchronous=NORMAL above): the
	// syncer does, off the store loop, before any commit is reported.
	s.wal.start(path)
	if err := s.migrate(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	if err := s.loadLastID(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	if err := s.prepareHot(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	// Nothing runs yet: lines marked running by a previous process are free.
	if _, err := s.writer.ExecContext(ctx, `UPDATE herald_lines SET blocked = 0 WHERE blocked = 2`); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: reset running lines: %w", err), s.Close())
	}
	if err := s.loadDoneLog(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	if err := s.repairLines(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	s.reader, err = sql.Open("sqlite", "file:"+path+"?"+pragmas+"&_pragma=query_only(1)")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open reader: %w", err), s.Close())
	}
	s.reader.SetMaxOpenConns(opts.Readers)
	s.reader.SetMaxIdleConns(opts.Readers)
	if s.nextLineRun, err = s.reader.PrepareContext(ctx, nextLineRunSQL); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: prepare: %w", err), s.Close())
	}
	if s.nextUnorderedRun, err = s.reader.PrepareContext(ctx, nextUnorderedRunSQL); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: prepare: %w", err), s.Close())
	}
	if err := s.ckpt.start(path, pragmas, pageSize, defaultCheckpointEvery); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open checkpointer: %w", err), s.Close())
	}
	return s, nil
}

// flockWithin takes an exclusive flock on f, polling for up to wait.
func flockWithin(ctx context.Context, f *os.File, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil || !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Close releases the database and its lock.
func (s *Store) Close() error {
	var errs []error
	// Leave every completion in its row: the file then reads the same to
	// any program, an older herald included.
	if s.writer != nil && s.done.len() > 0 {
		errs = append(errs, s.foldAll(context.Background()))
	}
	errs = append(errs, s.ckpt.close(), s.wal.close())
	for _, st := range s.stmts {
		errs = append(errs, st.Close())
	}
	for _, st := range []*sql.Stmt{s.nextLineRun, s.nextUnorderedRun} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.reader != nil {
		errs = append(errs, s.reader.Close())
	}
	if s.writer != nil {
		errs = append(errs, s.writer.Close())
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.wal.broken(); err != nil {
		return err
	}
	return s.reader.PingContext(ctx)
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.writer.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS herald_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlite: migrations table: %w", wrap(err))
	}
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		version := strings.TrimSuffix(filepath.Base(name), ".sql")
		var n int
		if err := s.writer.QueryRowContext(ctx, `SELECT count(*) FROM herald_migrations WHERE version = ?`, version).Scan(&n); err != nil {
			return fmt.Errorf("sqlite: read migrations: %w", wrap(err))
		}
		if n > 0 {
			continue
		}
		body, err := migrationFS.ReadFile(name)
		if err != nil {
			return err
		}
		err = s.inTx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO herald_migrations (version, applied_at) VALUES (?, ?)`, version, time.Now().UnixMicro())
			return err
		})
		if err != nil {
			return fmt.Errorf("sqlite: migration %s: %w", version, err)
		}
	}
	return nil
}

// inTx runs fn in a write transaction (BEGIN IMMEDIATE), commits, and
// returns once the commit is durable.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	durable, err := s.commitTx(ctx, fn)
	if err != nil {
		return err
	}
	return durable()
}

// commitTx runs fn in a write transaction and commits it; the commit is
// visible at once and durable when the returned Durable says so.
func (s *Store) commitTx(ctx context.Context, fn func(tx *sql.Tx) error) (store.Durable, error) {
	if err := s.wal.broken(); err != nil {
		return nil, err
	}
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return nil, wrap(err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return nil, wrap(err)
	}
	s.wal.settle()
	if err := tx.Commit(); err != nil {
		return nil, wrap(err)
	}
	s.ckpt.committed()
	return s.wal.committed(), nil
}

// inLineTx is inTx for transactions that move lines (under exchangeMu, or
// in Open): if it fails, the line memo forgets everything, since fn may
// have changed it to match writes that were rolled back.
func (s *Store) inLineTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	durable, err := s.commitLineTx(ctx, fn)
	if err != nil {
		return err
	}
	return durable()
}

// commitLineTx is commitTx for transactions that move lines (see inLineTx).
func (s *Store) commitLineTx(ctx context.Context, fn func(tx *sql.Tx) error) (store.Durable, error) {
	durable, err := s.commitTx(ctx, fn)
	if err != nil {
		s.memo.reset()
	}
	return durable, err
}

// wrap marks errors that mean "the store cannot write right now" with
// store.ErrUnavailable so callers can answer 503 and retry.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*sqlite.Error](err); ok {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_BUSY,
			sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN:
			if !errors.Is(err, store.ErrUnavailable) {
				return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
			}
		}
	}
	return err
}
