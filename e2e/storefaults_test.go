package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite" // the locking process opens the database itself
)

// storeFaultConfig keeps jobs scheduled an hour out, so that the only
// writes are the enqueues under test (and the engine's own bookkeeping).
const storeFaultConfig = `
workers: 4
kinds:
  k:
    type: noop
`

// enqueueOnce posts one job and returns the status and error code.
func enqueueOnce(t *testing.T, s *server, payloadBytes int) (int, string) {
	t.Helper()
	body := fmt.Sprintf(`{"kind":"k","key":"a","delay":"1h","payload":{"pad":%q}}`, strings.Repeat("x", payloadBytes))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	code, resp, err := post(ctx, http.DefaultClient, s.url("/v1/jobs"), body)
	if err != nil {
		select {
		case exit := <-s.done:
			t.Fatalf("enqueue: %v; herald serve had exited: %v:\n%s", err, exit, s.logs.String())
		case <-time.After(5 * time.Second):
			t.Fatalf("enqueue: %v (herald serve still running)", err)
		}
	}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(resp, &e)
	if code == http.StatusServiceUnavailable && e.Error.Message == "" {
		t.Errorf("503 without a message: %s", resp)
	}
	return code, e.Error.Code
}

// storedJobs counts the jobs the server has, by its own stats.
func storedJobs(t *testing.T, s *server) int64 {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url("/v1/stats"), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() //nolint:errcheck // decoded below
	var st struct {
		ByState map[string]int64 `json:"by_state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, c := range st.ByState {
		n += c
	}
	return n
}

// waitRecovered enqueues until one is acknowledged again, within limit.
func waitRecovered(t *testing.T, s *server, limit time.Duration) (acked int) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		code, errCode := enqueueOnce(t, s, 100)
		if code == http.StatusCreated {
			return 1
		}
		if code != http.StatusServiceUnavailable {
			t.Fatalf("while recovering: %d %s, want 201 or 503", code, errCode)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d %s %s after the fault cleared:\n%s", code, errCode, limit, s.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// enqueueUnderFault posts n jobs of payloadBytes while a fault holds and
// returns how many were acknowledged (the fault may not bite at once); the
// rest must be refused with 503 store_unavailable, and at least one must.
func enqueueUnderFault(t *testing.T, s *server, fault string, n, payloadBytes int) (acked int) {
	t.Helper()
	refused := 0
	for range n {
		code, errCode := enqueueOnce(t, s, payloadBytes)
		switch {
		case code == http.StatusCreated:
			acked++
		case code == http.StatusServiceUnavailable && errCode == "store_unavailable":
			refused++
		default:
			t.Fatalf("%s: %d %s, want 503 store_unavailable", fault, code, errCode)
		}
	}
	if refused == 0 {
		t.Fatalf("%s: %d enqueues were all acknowledged", fault, n)
	}
	return acked
}

// enqueueHealthy posts n small jobs that must all be acknowledged.
func enqueueHealthy(t *testing.T, s *server, n int) int {
	t.Helper()
	for range n {
		if code, errCode := enqueueOnce(t, s, 100); code != http.StatusCreated {
			t.Fatalf("before the fault: %d %s", code, errCode)
		}
	}
	return n
}

// recoverAndStop waits until enqueue works again, checks that the server
// stores exactly the acknowledged jobs (nothing refused half-written,
// nothing acknowledged lost) and stops it.
func recoverAndStop(t *testing.T, s *server, acked int, limit time.Duration) {
	t.Helper()
	acked += waitRecovered(t, s, limit)
	if n := storedJobs(t, s); n != int64(acked) {
		t.Errorf("%d jobs stored, %d acknowledged: a refused enqueue was half-written or an acked one lost", n, acked)
	}
	if err := s.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// mountTmpfs mounts a tmpfs of size bytes at dir, or skips the test when
// this process may not mount (not root, or no CAP_SYS_ADMIN).
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fill writes a file in dir until the disk is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() //nolint:errcheck // only filling
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				// Fill the last partial block too.
				for _, n := range []int{4096, 512, 64, 1} {
					for {
						if _, err := f.Write(chunk[:n]); err != nil {
							break
						}
					}
				}
				return path
			}
			t.Fatal(err)
		}
	}
}

// A full disk: enqueue answers 503 store_unavailable, stores nothing, and
// works again once space is freed, without a restart.
func TestStoreFaultDiskFull(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mountTmpfs(t, dir, 8<<20)
	s := startServer(t, dir, storeFaultConfig)
	acked := enqueueHealthy(t, s, 5)
	filler := fill(t, dir)
	acked += enqueueUnderFault(t, s, "disk full", 8, 64<<10) // the WAL may still have had room
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	recoverAndStop(t, s, acked, 10*time.Second)
}

// Another process holding an exclusive lock on the database: enqueue
// answers 503 store_unavailable within the busy timeout and recovers
// when the lock goes.
func TestStoreFaultLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := startServer(t, dir, storeFaultConfig)
	if code, errCode := enqueueOnce(t, s, 100); code != http.StatusCreated {
		t.Fatalf("before the fault: %d %s", code, errCode)
	}
	acked := 1
	unlock := lockDatabase(t, filepath.Join(dir, "herald.db"))
	began := time.Now()
	code, errCode := enqueueOnce(t, s, 100)
	took := time.Since(began)
	if code != http.StatusServiceUnavailable || errCode != "store_unavailable" {
		t.Errorf("locked: %d %s, want 503 store_unavailable", code, errCode)
	}
	// The busy timeout is 2s and an enqueue may wait twice (its batch,
	// then alone); a client must hear back well before its own timeout.
	if took > 8*time.Second {
		t.Errorf("locked: the 503 took %s, want it within the busy timeouts (about 4s)", took)
	}
	t.Logf("locked database: enqueue answered %d %s after %s", code, errCode, took.Round(time.Millisecond))
	unlock()
	recoverAndStop(t, s, acked, 15*time.Second)
}

// A database on a read-only file system: a running server keeps its file
// descriptors (a read-only remount is refused while files are open for
// writing), so the read-only fault meets serve at startup. It must exit at
// once with a clear error, not serve without a store, and the data must be
// intact once the file system is writable again.
func TestServeRefusesReadOnlyStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := startServer(t, dir, storeFaultConfig)
	if code, errCode := enqueueOnce(t, s, 100); code != http.StatusCreated {
		t.Fatalf("enqueue: %d %s", code, errCode)
	}
	if err := s.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount the data directory read-only (needs root or CAP_SYS_ADMIN): %v", err)
	}
	unmounted := false
	unmount := func() {
		if !unmounted {
			unmounted = true
			if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount: %v", err)
			}
		}
	}
	t.Cleanup(unmount)
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, heraldBin, "serve", "--data-dir", dir, "--listen", freeAddr(t), "--log-format", "json").CombinedOutput() //nolint:gosec // the binary under test
	if err == nil || ctx.Err() != nil {
		t.Fatalf("serve on a read-only store: err %v (ctx %v), want a prompt non-zero exit; output:\n%s", err, ctx.Err(), out)
	}
	if !strings.Contains(string(out), "read-only file system") {
		t.Errorf("serve's error does not say the store is read-only:\n%s", out)
	}
	unmount()
	s2 := startServer(t, dir, storeFaultConfig)
	if n := storedJobs(t, s2); n != 1 {
		t.Errorf("%d jobs after the read-only start, want the 1 acknowledged", n)
	}
	if err := s2.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// lockDatabase holds an exclusive SQLite lock on path from a separate
// process (the sqlite3 shell if installed, else a connection of this test
// process, which is not the server's process either) until unlock.
func lockDatabase(t *testing.T, path string) (unlock func()) {
	t.Helper()
	if sh, err := exec.LookPath("sqlite3"); err == nil {
		cmd := exec.CommandContext(t.Context(), sh, path) //nolint:gosec // the sqlite3 shell on a temp database
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintln(in, "PRAGMA busy_timeout=10000; BEGIN EXCLUSIVE; SELECT 'locked';"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), "locked") {
			if time.Now().After(deadline) {
				t.Fatalf("sqlite3 did not take the lock: %s", out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		return func() {
			_, _ = fmt.Fprintln(in, "ROLLBACK;")
			_ = in.Close()
			if err := cmd.Wait(); err != nil {
				t.Errorf("sqlite3: %v: %s", err, out.String())
			}
		}
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	return func() {
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		_ = conn.Close()
		_ = db.Close()
	}
}

// lockedBuffer is a strings.Builder safe for exec's copying goroutine and
// a reader polling it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// chattr sets or clears the immutable flag of files with chattr(1), or
// skips the test when this process may not (not root, or a file system
// without the flag).
func chattr(t *testing.T, flag string, paths ...string) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "chattr", append([]string{flag}, paths...)...).CombinedOutput() //nolint:gosec // fixed flag, test paths
	if err != nil {
		t.Skipf("chattr %s is not available here (needs root and ext4 or similar): %v: %s", flag, err, out)
	}
}

// Database files turned read-only under a running server (the immutable
// flag refuses writes even through descriptors already open, even for
// root): enqueue answers 503 store_unavailable, stores nothing, and works
// again once the files are writable, without a restart.
func TestStoreFaultReadOnlyFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := startServer(t, dir, storeFaultConfig)
	acked := enqueueHealthy(t, s, 5)
	files, err := filepath.Glob(filepath.Join(dir, "herald.db*"))
	if err != nil || len(files) < 2 {
		t.Fatalf("database files in %s: %v %v", dir, files, err)
	}
	chattr(t, "+i", files...)
	cleared := false
	makeWritable := func() {
		if !cleared {
			cleared = true
			if out, err := exec.CommandContext(context.Background(), "chattr", append([]string{"-i"}, files...)...).CombinedOutput(); err != nil { //nolint:gosec // fixed flag, test paths
				t.Errorf("chattr -i: %v: %s", err, out)
			}
		}
	}
	t.Cleanup(makeWritable) // before TempDir's removal, which the flag would refuse
	acked += enqueueUnderFault(t, s, "read-only files", 5, 100)
	makeWritable()
	recoverAndStop(t, s, acked, 15*time.Second)
}
