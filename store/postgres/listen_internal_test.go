package postgres

import (
	"sync/atomic"
	"testing"
	"time"
)

// The first kick wakes at once; a burst of kicks within the interval
// becomes one more wake-up at its end; nothing follows a quiet interval.
func TestDebouncer(t *testing.T) {
	t.Parallel()
	var wakes atomic.Int64
	d := &debouncer{wake: func() { wakes.Add(1) }, every: 50 * time.Millisecond}
	defer d.stop()
	d.kick()
	if got := wakes.Load(); got != 1 {
		t.Fatalf("after the first kick: %d wake-ups, want 1 at once", got)
	}
	for range 20 {
		d.kick()
	}
	if got := wakes.Load(); got != 1 {
		t.Fatalf("during the interval: %d wake-ups, want still 1", got)
	}
	time.Sleep(250 * time.Millisecond)
	if got := wakes.Load(); got != 2 {
		t.Fatalf("after the burst: %d wake-ups, want 2 (one for the whole burst)", got)
	}
	d.kick()
	if got := wakes.Load(); got != 3 {
		t.Fatalf("kick after a quiet interval: %d wake-ups, want 3 (at once)", got)
	}
}
