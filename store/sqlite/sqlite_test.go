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
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "herald.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
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
