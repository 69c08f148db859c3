package sqlite

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/heraldmq/herald/store"
)

// ErrSyncFailed means flushing the WAL to disk failed: commits since the
// last good flush may not survive a power loss, and the store takes no
// more writes. Restarting herald recovers from what the file holds.
var ErrSyncFailed = errors.New("sqlite: flushing the WAL to disk failed")

// walSyncer makes commits durable off the store loop. The writer commits
// with synchronous=NORMAL: SQLite writes a commit's WAL frames but does not
// flush them. The syncer then flushes the WAL file once for every commit
// written since its last flush, on its own goroutine, while the store loop
// goes on to its next cycle. A commit whose flush returned is as durable as
// synchronous=FULL makes it (FULL flushes the WAL in every commit, NORMAL
// never, and nothing else differs between them in WAL mode); callers
// acknowledge nothing before that.
type walSyncer struct {
	path string // the WAL file

	mu     sync.Mutex
	flush  func() error // flushes the WAL; tests replace it
	next   *syncRound   // commits waiting for the next flush
	last   *syncRound   // the latest round asked for (flushed in order)
	failed error        // the first failed flush's error; then every round fails
	closed bool

	kick chan struct{}
	done chan struct{}
}

// syncRound is one flush and the commits it covers.
type syncRound struct {
	done chan struct{}
	err  error
}

func (w *walSyncer) start(dbPath string) {
	w.path = dbPath + "-wal"
	w.flush = w.flushWAL
	w.kick = make(chan struct{}, 1)
	w.done = make(chan struct{})
	go w.run()
}

// committed returns the durability of a commit that has just returned:
// the next flush covers it, since it starts after this call.
func (w *walSyncer) committed() store.Durable {
	w.mu.Lock()
	if w.failed != nil || w.closed {
		err := w.failed
		w.mu.Unlock()
		if err == nil {
			err = errors.New("sqlite: store closed before the commit was flushed")
		}
		return func() error { return fmt.Errorf("%w: %w: %w", store.ErrUnavailable, store.ErrCommitUnknown, err) }
	}
	r := w.next
	if r == nil {
		r = &syncRound{done: make(chan struct{})}
		w.next, w.last = r, r
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default: // a flush is already due
	}
	return func() error {
		<-r.done
		if r.err != nil {
			return fmt.Errorf("%w: %w: %w", store.ErrUnavailable, store.ErrCommitUnknown, r.err)
		}
		return nil
	}
}

// settle waits until every commit so far has been flushed (or its flush
// failed). A commit waits for its predecessors' flush before it writes:
// a cycle runs its statements while the previous one is being flushed, but
// cycles still commit no faster than the disk flushes, so each commit
// carries everything that arrived meanwhile. Committing at once instead
// made many small commits, each writing the same index pages to the WAL
// again: single-job enqueues ran at two thirds of the speed.
func (w *walSyncer) settle() {
	w.mu.Lock()
	r := w.last
	w.mu.Unlock()
	if r != nil {
		<-r.done
	}
}

// broken returns the failed flush's error, which stops all writes.
func (w *walSyncer) broken() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed != nil {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, w.failed)
	}
	return nil
}

func (w *walSyncer) run() {
	defer close(w.done)
	for range w.kick {
		w.mu.Lock()
		r, closed := w.next, w.closed
		w.next = nil
		w.mu.Unlock()
		if r != nil {
			w.finish(r)
		}
		if closed {
			return
		}
	}
}

// finish flushes the WAL for round r and releases its waiters.
func (w *walSyncer) finish(r *syncRound) {
	w.mu.Lock()
	err, flush := w.failed, w.flush
	w.mu.Unlock()
	if err == nil {
		if ferr := flush(); ferr != nil {
			// After a failed flush the kernel may have dropped the dirty
			// pages, so a later flush could succeed without writing them:
			// the only safe course is to stop.
			err = fmt.Errorf("%w: %w", ErrSyncFailed, ferr)
			w.mu.Lock()
			w.failed = err
			w.mu.Unlock()
		}
	}
	r.err = err
	close(r.done)
}

// close flushes what is waiting and stops the syncer.
func (w *walSyncer) close() error {
	if w.done == nil {
		return nil
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed
}

// flushWAL flushes the WAL file's data to disk. A missing file holds
// nothing to flush: SQLite deletes the WAL only after checkpointing all of
// it into the database file and flushing that, when its last connection
// closes.
func (w *walSyncer) flushWAL() error {
	f, err := os.OpenFile(w.path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	err = fdatasync(f)
	return errors.Join(err, f.Close())
}
