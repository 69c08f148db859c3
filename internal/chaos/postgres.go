package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNoPostgres means the PostgreSQL server binaries (initdb, pg_ctl) are
// not installed, so the harness cannot start a private instance.
var ErrNoPostgres = errors.New("chaos: PostgreSQL server binaries (initdb, pg_ctl) not found")

// postgres is a private PostgreSQL instance in a temporary directory,
// started with initdb/pg_ctl. The harness restarts it as a fault; it never
// touches the machine's shared server.
type postgres struct {
	base   string // temporary directory holding all of it
	bin    string // directory holding initdb and pg_ctl
	dir    string // data directory
	sock   string // unix socket directory
	logf   string
	port   int
	runAs  string // PostgreSQL refuses to run as root: run as this user
	params string // pg_ctl -o options
}

// PostgresBin returns the directory of the PostgreSQL server tools the
// harness uses for its private instance, or ErrNoPostgres.
func PostgresBin() (string, error) { return findPostgresBin() }

// findPostgresBin returns the newest /usr/lib/postgresql/*/bin with pg_ctl,
// or the directory of pg_ctl on PATH.
func findPostgresBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(a))))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(b))))
		return vb - va
	})
	if len(dirs) > 0 {
		return filepath.Dir(dirs[0]), nil
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoPostgres
}

// newPostgres creates (initdb) a cluster in a new temporary directory;
// start runs it, remove deletes it. Not under the harness's directory:
// when running as root the server runs as another user, who must be able
// to reach it, and the harness's directory may sit below private ones.
func newPostgres(ctx context.Context) (*postgres, error) {
	bin, err := findPostgresBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "herald-chaos-pg-")
	if err != nil {
		return nil, err
	}
	pg := &postgres{base: dir, bin: bin, dir: filepath.Join(dir, "pgdata"), sock: filepath.Join(dir, "pgsock"), logf: filepath.Join(dir, "postgres.log")}
	if os.Geteuid() == 0 {
		pg.runAs = "postgres"
	}
	addr, err := freeAddr(ctx)
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	pg.port, _ = strconv.Atoi(port)
	pg.params = fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200", pg.port, pg.sock)
	for _, d := range []string{pg.dir, pg.sock} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if pg.runAs != "" {
		u, err := user.Lookup(pg.runAs)
		if err != nil {
			return nil, fmt.Errorf("chaos: running as root needs a %q user for PostgreSQL: %w", pg.runAs, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, p := range []string{dir, pg.dir, pg.sock} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, err
			}
		}
		// The log file too: pg_ctl opens it as the PostgreSQL user.
		if err := os.WriteFile(pg.logf, nil, 0o600); err != nil {
			return nil, err
		}
		if err := os.Chown(pg.logf, uid, gid); err != nil {
			return nil, err
		}
	}
	if out, err := pg.run(ctx, "initdb", "-D", pg.dir, "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		return nil, fmt.Errorf("chaos: initdb: %w: %s", err, out)
	}
	return pg, nil
}

func (pg *postgres) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	name := filepath.Join(pg.bin, tool)
	if pg.runAs != "" {
		args = append([]string{"-u", pg.runAs, "--", name}, args...)
		name = "runuser"
	}
	return exec.CommandContext(ctx, name, args...).CombinedOutput() //nolint:gosec // PostgreSQL's own tools on a temp dir
}

// URL is the connection string herald's --store takes.
func (pg *postgres) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
}

func (pg *postgres) start(ctx context.Context) error {
	out, err := pg.run(ctx, "pg_ctl", "-D", pg.dir, "-o", pg.params, "-l", pg.logf, "-w", "-t", "60", "start")
	if err != nil {
		return fmt.Errorf("chaos: pg_ctl start: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// stop stops the server; mode "immediate" is a crash (no checkpoint).
func (pg *postgres) stop(ctx context.Context, mode string) error {
	out, err := pg.run(ctx, "pg_ctl", "-D", pg.dir, "-m", mode, "-w", "-t", "60", "stop")
	if err != nil {
		return fmt.Errorf("chaos: pg_ctl stop -m %s: %w: %s", mode, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// remove deletes the cluster's directory; stop it first.
func (pg *postgres) remove() error { return os.RemoveAll(pg.base) }
