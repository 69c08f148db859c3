package e2e

import (
	"syscall"
	"testing"
	"time"
)

// A node that dies by itself (a crash) and that the test never stops:
// startServer's cleanup must not read the process state that the
// waiting goroutine writes (the race detector once flagged it when a
// node crashed under TestStoreFaultReadOnlyFiles).
func TestServerHelperAfterCrash(t *testing.T) {
	t.Parallel()
	s := startServer(t, t.TempDir(), storeFaultConfig)
	if err := syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the waiting goroutine sees the exit
}
