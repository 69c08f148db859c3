package sqlite

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
)

// gatedFlush replaces s's WAL flush with one that counts its calls and
// waits for a value on release, which it returns.
func gatedFlush(s *Store) (calls *atomic.Int64, release chan error) {
	calls, release = &atomic.Int64{}, make(chan error)
	s.wal.mu.Lock()
	s.wal.flush = func() error {
		calls.Add(1)
		return <-release
	}
	s.wal.mu.Unlock()
	return calls, release
}

func oneInsert(key string) store.ExchangeParams {
	return store.ExchangeParams{Now: time.Now(), Inserts: []store.InsertParams{
		{Kind: "k", Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 1}}}
}

// returned reports whether fn returns within a moment, and its error.
func returned(fn func() error) (bool, error) {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return true, err
	case <-time.After(200 * time.Millisecond):
		return false, nil
	}
}

// A deferred exchange is committed (later exchanges see it) before its WAL
// flush; it is reported durable only once a flush that started after its
// commit has returned, and Exchange itself waits for that.
func TestDeferredExchangeDurableAfterFlush(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	calls, release := gatedFlush(s)

	res, durable, err := s.ExchangeDeferred(ctx, oneInsert("a"))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Inserted[0].Job.ID
	if j, err := s.Get(ctx, id); err != nil || j.ID != id {
		t.Fatalf("Get(%d) before the flush = %v, %v; want the committed job", id, j, err)
	}
	if ok, _ := returned(durable); ok {
		t.Fatal("durable returned before the WAL was flushed")
	}
	// A synchronous Exchange waits for a flush too.
	syncDone := make(chan error, 1)
	go func() { _, err := s.Exchange(ctx, oneInsert("b")); syncDone <- err }()
	select {
	case err := <-syncDone:
		t.Fatalf("Exchange returned before any flush: %v", err)
	case <-time.After(100 * time.Millisecond):
	}

	release <- nil // the first flush: it covers the deferred exchange
	if ok, err := returned(durable); !ok || err != nil {
		t.Fatalf("durable after the flush: returned %v, err %v", ok, err)
	}
	// The second exchange committed only after the first flush (commits
	// wait for their predecessors' flush), so it needs a flush of its own.
	select {
	case err := <-syncDone:
		t.Fatalf("Exchange returned before its own flush: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	release <- nil
	if err := <-syncDone; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("flushes = %d, want 2", n)
	}
}

// Commits that arrive while a flush runs share the next one.
func TestCommitsShareAFlush(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	calls, release := gatedFlush(s)

	_, first, err := s.ExchangeDeferred(ctx, oneInsert("a"))
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the syncer is inside the first flush.
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// These commit after the first flush returns (each waits for its
	// predecessors' flush before committing), one after another.
	const n = 5
	durables := make(chan store.Durable, n)
	go func() {
		for i := range n {
			_, d, err := s.ExchangeDeferred(ctx, oneInsert(string(rune('b'+i))))
			if err != nil {
				t.Error(err)
				return
			}
			durables <- d
		}
	}()
	release <- nil // first flush done
	var got []store.Durable
	for len(got) < n {
		select {
		case d := <-durables:
			got = append(got, d)
		case release <- nil:
		}
	}
	stop := make(chan struct{})
	go func() { // release whatever flushes remain
		for {
			select {
			case release <- nil:
			case <-stop:
				return
			}
		}
	}()
	defer close(stop)
	for _, d := range append(got, first) {
		if err := d(); err != nil {
			t.Fatal(err)
		}
	}
	// Each later commit waits for the flush before it, so at most one
	// flush per commit; more would mean flushes that covered nothing new.
	if c := calls.Load(); c > n+1 {
		t.Errorf("flushes = %d for %d commits", c, n+1)
	}
}

// A failed flush leaves the commits it covered in doubt, and the store
// refuses writes from then on (the kernel may have dropped the pages, so a
// later flush proving nothing must not be trusted); Ping reports it.
func TestFlushFailureStopsWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "herald.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, release := gatedFlush(s)
	_, durable, err := s.ExchangeDeferred(ctx, oneInsert("a"))
	if err != nil {
		t.Fatal(err)
	}
	release <- errors.New("EIO")
	err = durable()
	if !errors.Is(err, store.ErrCommitUnknown) || !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, ErrSyncFailed) {
		t.Fatalf("durable() = %v, want ErrCommitUnknown, ErrUnavailable and ErrSyncFailed", err)
	}
	for name, fn := range map[string]func() error{
		"Exchange": func() error { _, err := s.Exchange(ctx, oneInsert("b")); return err },
		"Cancel":   func() error { _, err := s.Cancel(ctx, 1, time.Now()); return err },
		"Ping":     func() error { return s.Ping(ctx) },
	} {
		if err := fn(); !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, ErrSyncFailed) {
			t.Errorf("%s after a failed flush = %v, want ErrUnavailable and ErrSyncFailed", name, err)
		}
	}
	if err := s.Close(); !errors.Is(err, ErrSyncFailed) {
		t.Errorf("Close = %v, want ErrSyncFailed", err)
	}
}

// The real flush: it flushes the WAL file, and a missing WAL (SQLite
// removes it after checkpointing all of it at its last close) is fine.
func TestFlushWAL(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	if _, err := s.Exchange(context.Background(), oneInsert("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.wal.flushWAL(); err != nil {
		t.Errorf("flushWAL = %v", err)
	}
	gone := walSyncer{path: filepath.Join(t.TempDir(), "none.db-wal")}
	if err := gone.flushWAL(); err != nil {
		t.Errorf("flushWAL of a missing file = %v, want nil", err)
	}
}
