package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/heraldmq/herald/internal/history"
)

// privatePostgres is a PostgreSQL server of the test's own, so the test can
// stop and start it without disturbing the machine's server.
type privatePostgres struct {
	t    *testing.T
	bin  string // directory of initdb and pg_ctl
	dir  string
	port int
	cred *syscall.Credential // run as this user (root may not run postgres)
}

// startPrivatePostgres initializes and starts a server in a temporary
// directory. Without PostgreSQL's server binaries the test skips, unless
// HERALD_REQUIRE_SERVICES=1.
func startPrivatePostgres(t *testing.T) *privatePostgres {
	t.Helper()
	initdbs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(initdbs) == 0 {
		if p, err := exec.LookPath("initdb"); err == nil {
			initdbs = []string{p}
		}
	}
	if len(initdbs) == 0 {
		msg := "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql to run this test"
		if os.Getenv("HERALD_REQUIRE_SERVICES") == "1" {
			t.Fatal(msg + " (HERALD_REQUIRE_SERVICES=1)")
		}
		t.Skip(msg)
	}
	pg := &privatePostgres{t: t, bin: filepath.Dir(initdbs[len(initdbs)-1])}
	// Not t.TempDir: its parents are private to root, and the server may
	// run as another user.
	dir, err := os.MkdirTemp("", "herald-pg-") //nolint:usetesting // t.TempDir's parents are private to root; the server may run as postgres
	if err != nil {
		t.Fatal(err)
	}
	pg.dir = dir
	t.Cleanup(func() {
		_ = pg.ctl("stop", "-m", "immediate")
		_ = os.RemoveAll(dir)
	})
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs a postgres user to run the server: %v", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		pg.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
	}
	addr := freeAddr(t)
	_, portStr, _ := net.SplitHostPort(addr)
	pg.port, _ = strconv.Atoi(portStr)
	if out, err := pg.run("initdb", "-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := pg.ctl("start"); err != nil {
		t.Fatalf("pg_ctl start: %v", err)
	}
	return pg
}

func (pg *privatePostgres) run(name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(context.Background(), filepath.Join(pg.bin, name), args...) //nolint:gosec // PostgreSQL's own tools
	if pg.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred}
	}
	cmd.Dir = pg.dir
	return cmd.CombinedOutput()
}

// ctl runs pg_ctl action (start, stop) and waits for it to complete.
func (pg *privatePostgres) ctl(action string, args ...string) error {
	base := []string{action, "-w", "-D", filepath.Join(pg.dir, "data")}
	if action == "start" {
		base = append(base, "-l", filepath.Join(pg.dir, "log"),
			"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", pg.port, pg.dir))
	}
	out, err := pg.run("pg_ctl", append(base, args...)...)
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

func (pg *privatePostgres) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&schema=herald", pg.port)
}

// PostgreSQL restarts under load (pg_ctl stop -m fast, then start): two
// nodes keep taking events (answering 503 while the database is away, so
// producers retry), reconnect by themselves, and deliver everything
// acknowledged, in order.
func TestPostgresRestartUnderLoad(t *testing.T) {
	t.Parallel()
	pg := startPrivatePostgres(t)
	events, accounts := 6000, 100
	if testing.Short() {
		events, accounts = 1500, 50
	}
	rcv := newNodeReceiver(2 * time.Millisecond)
	close(rcv.open)
	hook := httptest.NewServer(rcv)
	t.Cleanup(hook.Close)
	nodes := make([]*server, 2)
	for i := range nodes {
		nodes[i] = startServer(t, t.TempDir(), eventsConfig(fmt.Sprintf("%s/node/%d", hook.URL, i)),
			"--store", pg.url(), "--lease", "3s")
	}

	posted := make(chan error, 1)
	go func() { posted <- postEventsVia(t.Context(), nodes, rcv.rec, randomAccounts(events, accounts), 16) }()
	waitUntil(t, time.Minute, "a fifth delivered", func() bool { return rcv.delivered() >= events/5 })
	if err := pg.ctl("stop", "-m", "fast"); err != nil {
		t.Fatal(err)
	}
	atStop := rcv.delivered()
	time.Sleep(2 * time.Second)
	if err := pg.ctl("start"); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	if err := <-posted; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Minute, "every event delivered", func() bool { return rcv.delivered() >= events })
	if atStop >= events {
		t.Fatalf("the restart came too late: %d of %d delivered when it stopped", atStop, events)
	}
	rep := rcv.rec.Check(history.Options{})
	t.Logf("%d events, 2 nodes; PostgreSQL stopped at %d delivered for 2s; everything delivered %s after the restart; %s",
		events, atStop, time.Since(restarted).Round(time.Millisecond), rep)
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	for i, s := range nodes {
		if err := s.stop(syscall.SIGTERM, 40*time.Second); err != nil {
			t.Errorf("node %d exit after SIGTERM: %v\n%s", i, err, s.logs.String())
		}
	}
}
