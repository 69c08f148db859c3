package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// SQLite's automatic checkpoint runs inside the commit that takes the WAL
// past wal_autocheckpoint pages: that commit then copies up to 32 MiB into
// the database file and fsyncs it (about 100 ms on a small VM) while every
// enqueue, completion and claim of the store loop waits. The checkpointer
// does that work from its own connection instead, beside the writer (a
// PASSIVE checkpoint takes no lock the writer needs), so the loop only ever
// waits for its own WAL append. The writer keeps a far larger automatic
// threshold as a backstop, should checkpoints fail or fall behind.

const (
	// defaultCheckpointEvery is how often the checkpointer copies what
	// was committed since its last run.
	defaultCheckpointEvery = 250 * time.Millisecond
	// backstopBytes is the writer's own wal_autocheckpoint (in pages of
	// the database's size): reached only if the checkpointer cannot keep up.
	backstopBytes = 256 << 20
	// truncateBytes: a WAL that a burst left larger than this is truncated
	// once the writer is idle. Under steady load the writer rarely finds
	// every frame copied when it starts a transaction, so the WAL only
	// restarts near the backstop and its file stays that large (and every
	// read of a page looks through that much WAL index) until the store is
	// closed. Smaller WALs are left alone: a commit that extends the file
	// must also flush its new size, so a WAL truncated after every pause
	// would make each commit of a light load dearer.
	truncateBytes = 64 << 20
	// truncateWait is how long a truncation waits for readers to leave
	// the WAL before it gives up until the next idle tick.
	truncateWait = 20 * time.Millisecond
)

type checkpointer struct {
	db        *sql.DB
	every     time.Duration
	commits   atomic.Int64 // write transactions since the last checkpoint
	runs      atomic.Int64 // checkpoints done, for tests
	truncates atomic.Int64 // truncations done, for tests
	pageSize  int64        // the database's, to size the WAL from its frames
	stop      chan struct{}
	done      chan struct{}
	closed    sync.Once
}

// start opens the checkpointer's connection and runs it until close.
func (c *checkpointer) start(path, pragmas string, pageSize int, every time.Duration) error {
	// A TRUNCATE checkpoint holds the write lock while it waits for
	// readers to leave the WAL: it must give up soon rather than keep the
	// store loop waiting behind a long read. (PASSIVE never waits.)
	db, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+fmt.Sprintf("&_pragma=busy_timeout(%d)", truncateWait.Milliseconds()))
	if err != nil {
		return err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	c.db, c.every, c.pageSize = db, every, int64(pageSize)
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	go c.run()
	return nil
}

// committed notes a write transaction for the next checkpoint.
func (c *checkpointer) committed() { c.commits.Add(1) }

func (c *checkpointer) run() {
	defer close(c.done)
	t := time.NewTicker(c.every)
	defer t.Stop()
	large := false // the WAL grew past truncateBytes since it was last truncated
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if c.commits.Swap(0) == 0 {
			if large {
				// Idle for a whole tick: TRUNCATE waits for a writer that
				// starts meanwhile (or makes it wait, briefly: the frames
				// are mostly copied already) and empties the file.
				if busy, _, err := c.checkpoint("TRUNCATE"); err == nil && !busy {
					large = false
					c.truncates.Add(1)
				}
			}
			continue
		}
		// An error (the disk is full, an outside tool holds a lock)
		// leaves the frames in the WAL: the next run copies them, and the
		// writer's backstop bounds the WAL meanwhile.
		_, frames, err := c.checkpoint("PASSIVE")
		if err != nil {
			c.commits.Add(1)
			continue
		}
		large = large || frames*(c.pageSize+walFrameHeader) > truncateBytes
		c.runs.Add(1)
	}
}

// walFrameHeader is the size of a WAL frame's header; a frame is that and
// one page.
const walFrameHeader = 24

// checkpoint runs a checkpoint of mode and returns whether it could not
// finish (a reader or the writer was in the way) and the frames in the WAL.
func (c *checkpointer) checkpoint(mode string) (busy bool, frames int64, err error) {
	var copied int64
	err = c.db.QueryRowContext(context.Background(), `PRAGMA wal_checkpoint(`+mode+`)`).Scan(&busy, &frames, &copied)
	return busy, frames, err
}

// close stops the checkpointer and closes its connection. Safe on a
// checkpointer that never started, and more than once.
func (c *checkpointer) close() error {
	if c.db == nil {
		return nil
	}
	var err error
	c.closed.Do(func() {
		close(c.stop)
		<-c.done
		err = c.db.Close()
	})
	return err
}
