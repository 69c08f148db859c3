package sqlite

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openTest(t *testing.T) *Store {
	t.Helper()
	return openWith(t, Options{})
}

// openWith opens a store with opts in a temporary directory, closed when
// the test or benchmark ends.
func openWith(tb testing.TB, opts Options) *Store {
	tb.Helper()
	s, err := Open(context.Background(), filepath.Join(tb.TempDir(), "herald.db"), opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// A file that is not an SQLite database is refused, not overwritten.
func TestOpenRefusesForeignFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "herald.db")
	body := []byte("not a database, and longer than a header\n")
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(context.Background(), path, Options{}); err == nil {
		t.Fatal("Open accepted a file that is not a database", s.Close())
	}
	if got, err := os.ReadFile(path); err != nil || string(got) != string(body) {
		t.Errorf("file now %q, %v; want it untouched", got, err)
	}
}

// A lock released shortly after Open starts (as when a forked child of the
// previous owner still holds its descriptor until exec) is waited for; a
// lock held past LockWait fails with ErrLocked.
func TestOpenWaitsForLock(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		holdFor time.Duration
		wantErr error
	}{
		{"released within the wait", 150 * time.Millisecond, nil},
		{"held past the wait", 2 * time.Second, ErrLocked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "herald.db")
			// Another open file description of the lock file: flock
			// conflicts with it even within one process.
			holder, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Flock(int(holder.Fd()), syscall.LOCK_EX); err != nil {
				t.Fatal(err)
			}
			released := make(chan struct{})
			go func() {
				defer close(released)
				time.Sleep(tt.holdFor)
				_ = holder.Close()
			}()
			s, err := Open(context.Background(), path, Options{LockWait: 500 * time.Millisecond})
			if s != nil {
				defer s.Close() //nolint:errcheck // test
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("Open = %v, want %v", err, tt.wantErr)
			}
			<-released
		})
	}
}

// A database Open creates gets Options.PageSize (4096 by default); one
// that exists keeps the size it was made with; a size SQLite cannot use
// fails before anything is created.
func TestPageSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		first    int // PageSize when the database is created; -1: no database before
		then     int // PageSize when it is opened (again)
		want     int
		wantErr  error
		wantFile bool
	}{
		{name: "default", first: -1, then: 0, want: 4096, wantFile: true},
		{name: "chosen", first: -1, then: 16384, want: 16384, wantFile: true},
		{name: "existing keeps its size", first: 16384, then: 0, want: 16384, wantFile: true},
		{name: "not a power of two", first: -1, then: 5000, wantErr: ErrPageSize},
		{name: "too large", first: -1, then: 131072, wantErr: ErrPageSize},
		{name: "too small", first: -1, then: 256, wantErr: ErrPageSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "herald.db")
			if tt.first >= 0 {
				s, err := Open(ctx, path, Options{PageSize: tt.first})
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
			}
			s, err := Open(ctx, path, Options{PageSize: tt.then})
			if _, statErr := os.Stat(path); (statErr == nil) != tt.wantFile {
				t.Errorf("database file exists = %v, want %v", statErr == nil, tt.wantFile)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Open = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := s.Close(); err != nil {
					t.Error(err)
				}
			}()
			var got int
			var mode string
			if err := s.writer.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if err := s.writer.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
				t.Fatal(err)
			}
			if got != tt.want || mode != "wal" {
				t.Errorf("page_size %d, journal_mode %q; want %d, wal", got, mode, tt.want)
			}
			// The writer's checkpoint backstop is a size in bytes, whatever the page.
			var backstop int
			if err := s.writer.QueryRowContext(ctx, `PRAGMA wal_autocheckpoint`).Scan(&backstop); err != nil {
				t.Fatal(err)
			}
			if backstop*got != backstopBytes {
				t.Errorf("wal_autocheckpoint %d pages of %d bytes, want %d bytes", backstop, got, backstopBytes)
			}
		})
	}
}
