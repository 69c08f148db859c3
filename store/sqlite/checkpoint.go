package sqlite

import (
	"context"
	"database/sql"
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
)

type checkpointer struct {
	db      *sql.DB
	every   time.Duration
	commits atomic.Int64 // write transactions since the last checkpoint
	runs    atomic.Int64 // checkpoints done, for tests
	stop    chan struct{}
	done    chan struct{}
	closed  sync.Once
}

// start opens the checkpointer's connection and runs it until close.
func (c *checkpointer) start(path, pragmas string, every time.Duration) error {
	db, err := sql.Open("sqlite", "file:"+path+"?"+pragmas)
	if err != nil {
		return err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	c.db, c.every = db, every
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
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if c.commits.Swap(0) == 0 {
			continue
		}
		// An error (the disk is full, an outside tool holds a lock)
		// leaves the frames in the WAL: the next run copies them, and the
		// writer's backstop bounds the WAL meanwhile.
		if _, err := c.db.ExecContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`); err != nil {
			c.commits.Add(1)
			continue
		}
		c.runs.Add(1)
	}
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
