package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// openURL opens another store (another node) on the database u names.
func openURL(t *testing.T, u string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), u, postgres.Options{MaxConns: 4})
	if err != nil {
		t.Fatalf("postgres.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestOpenOptions(t *testing.T) {
	t.Parallel()
	base := pgtest.URL(t)
	tests := []struct {
		name       string
		url        string
		opts       postgres.Options
		wantSchema string
		wantErr    error
	}{
		{"URLSchema", pgtest.WithSchema(base, "herald_test_opt_a"), postgres.Options{}, "herald_test_opt_a", nil},
		{"OptionsWin", pgtest.WithSchema(base, "herald_test_opt_a"), postgres.Options{Schema: "herald_test_opt_b"}, "herald_test_opt_b", nil},
		{"BadSchema", pgtest.WithSchema(base, "Robert'); DROP TABLE x"), postgres.Options{}, "", postgres.ErrBadSchema},
		{"PollOnly", pgtest.WithSchema(base, "herald_test_opt_c") + "&poll_only=true", postgres.Options{}, "herald_test_opt_c", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := postgres.Open(t.Context(), tt.url, tt.opts)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Open error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := errors.Join(s.DropSchema(ctx), s.Close()); err != nil {
					t.Error(err)
				}
			})
			if s.Schema() != tt.wantSchema {
				t.Errorf("Schema() = %q, want %q", s.Schema(), tt.wantSchema)
			}
			if err := s.Ping(t.Context()); err != nil {
				t.Errorf("Ping: %v", err)
			}
		})
	}
}

// Nodes starting at once on a new schema migrate it exactly once.
func TestConcurrentMigrations(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			s, err := postgres.Open(t.Context(), u, postgres.Options{MaxConns: 2})
			if err == nil {
				err = s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	s := openURL(t, u)
	conn, err := pgx.Connect(t.Context(), pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background()) //nolint:errcheck // test connection
	files, err := filepath.Glob("migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("migration files: %v, %v", files, err)
	}
	var n, distinct int
	if err := conn.QueryRow(t.Context(), `SELECT count(*), count(DISTINCT version) FROM `+
		pgx.Identifier{s.Schema(), "schema_migrations"}.Sanitize()).Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	if n != len(files) || distinct != n {
		t.Errorf("schema_migrations has %d rows (%d versions), want %d (each migration applied once)", n, distinct, len(files))
	}
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1.
	_, err := postgres.Open(t.Context(), "postgres://postgres@127.0.0.1:1/test?connect_timeout=2", postgres.Options{})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open of an unreachable server: %v, want ErrUnavailable", err)
	}
	s := openTest(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.InsertMany(t.Context(), store.InsertManyParams{Now: time.Now(), Jobs: []store.InsertParams{{Kind: "k", Payload: []byte(`{}`), MaxAttempts: 1}}})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("InsertMany on a closed store: %v, want ErrUnavailable", err)
	}
}

// Two nodes insert batches of the same new keys in opposite orders and
// finish each other's lines: advisory locks in sorted order must keep
// them from deadlocking, and every key keeps exactly one line.
func TestNodesShareNewKeys(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	nodes := []*postgres.Store{openURL(t, u), openURL(t, u)}
	const rounds, keys = 30, 40
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for n, s := range nodes {
		wg.Go(func() {
			owner := fmt.Sprintf("node-%d", n)
			r := rand.New(rand.NewPCG(rand.Uint64(), 9))
			for round := range rounds {
				ps := make([]store.InsertParams, keys)
				for i := range ps {
					ps[i] = store.InsertParams{Kind: "k", Key: fmt.Sprintf("r%d-k%d", round, i), Payload: []byte(`{}`), MaxAttempts: 3}
				}
				r.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
				now := time.Now()
				res, err := s.Exchange(t.Context(), store.ExchangeParams{Now: now, Inserts: ps,
					Claim: &store.ClaimParams{Now: now, Owner: owner, LeaseUntil: now.Add(time.Minute),
						Limits: []store.KindLimit{{Kind: "k", Max: keys / 2}}, Max: keys / 2}})
				if err != nil {
					errs <- fmt.Errorf("%s round %d: insert: %w", owner, round, err)
					return
				}
				fs := make([]store.FinishParams, len(res.Claimed))
				for i, j := range res.Claimed {
					fs[i] = store.FinishParams{ID: j.ID, Owner: owner, LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}
				}
				if _, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: fs}); err != nil {
					errs <- fmt.Errorf("%s round %d: finish: %w", owner, round, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Drain what is left: every job runs once and every line goes away.
	drainAll(t, nodes[0], 1000, 1000)
	st, err := nodes[1].Stats(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.ByKindState["k"][store.StateCompleted], int64(len(nodes)*rounds*keys); got != want || len(st.ByKindState["k"]) != 1 {
		t.Errorf("jobs by state %v, want all %d completed", st.ByKindState["k"], want)
	}
	for _, key := range []string{"r0-k0", fmt.Sprintf("r%d-k%d", rounds-1, keys-1)} {
		if l, err := nodes[1].Line(t.Context(), key); err != nil || l.Head != nil || l.Pending != 0 {
			t.Errorf("line of %s after draining: %+v, %v; want none", key, l, err)
		}
	}
}

func TestListen(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	listener, writer := openURL(t, u), openURL(t, u)
	woken := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- listener.Listen(ctx, func() { woken <- struct{}{} }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Listen returned %v after its context ended", err)
		}
	}()
	waitWake := func(what string) {
		t.Helper()
		select {
		case <-woken:
		case <-time.After(5 * time.Second):
			t.Fatalf("no wake-up within 5s %s", what)
		}
	}
	drain := func() {
		for len(woken) > 0 {
			<-woken
		}
	}
	waitWake("when listening started")
	insert := func() {
		t.Helper()
		if _, err := writer.InsertMany(t.Context(), store.InsertManyParams{Now: time.Now(),
			Jobs: []store.InsertParams{{Kind: "k", Key: "a", Payload: []byte(`{}`), MaxAttempts: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	drain()
	insert()
	waitWake("after another node inserted")

	// Kill the listening connection: the listener reconnects by itself.
	conn, err := pgx.Connect(t.Context(), pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background()) //nolint:errcheck // test connection
	var killed int
	err = conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN %' AND query LIKE '%'||$1||'%'`, listener.Schema()).Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminate the listening connection: %d terminated, %v", killed, err)
	}
	waitWake("after reconnecting")
	deadline := time.Now().Add(5 * time.Second)
	for {
		drain()
		insert()
		select {
		case <-woken:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no wake-up for inserts after the connection was killed")
		}
	}
}

// Several listeners on one store (a client's store loops) share one
// LISTEN connection: each is woken by another node's insert, one leaving
// does not stop the others, and the connection closes with the last.
func TestListenersShareAConnection(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	listener, writer := openURL(t, u), openURL(t, u)
	admin, err := pgx.Connect(t.Context(), pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background()) //nolint:errcheck // test connection
	listening := func() int {
		t.Helper()
		var n int
		if err := admin.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE query LIKE 'LISTEN %' AND query LIKE '%'||$1||'%'`, listener.Schema()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	type sub struct {
		woken  chan struct{}
		cancel context.CancelFunc
		done   chan error
	}
	start := func() sub {
		ctx, cancel := context.WithCancel(t.Context())
		s := sub{woken: make(chan struct{}, 100), cancel: cancel, done: make(chan error, 1)}
		go func() { s.done <- listener.Listen(ctx, func() { s.woken <- struct{}{} }) }()
		return s
	}
	stop := func(s sub) {
		s.cancel()
		if err := <-s.done; err != nil {
			t.Errorf("Listen returned %v after its context ended", err)
		}
	}
	// wokenByInsert inserts until s wakes.
	wokenByInsert := func(s sub, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			for len(s.woken) > 0 {
				<-s.woken
			}
			if _, err := writer.InsertMany(t.Context(), store.InsertManyParams{Now: time.Now(),
				Jobs: []store.InsertParams{{Kind: "k", Key: "a", Payload: []byte(`{}`), MaxAttempts: 1}}}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-s.woken:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no wake-up for inserts %s", what)
			}
		}
	}
	a, b := start(), start()
	for _, s := range []sub{a, b} { // the wake-up every listener gets as it starts
		select {
		case <-s.woken:
		case <-time.After(5 * time.Second):
			t.Fatal("a listener was not woken when it started")
		}
	}
	time.Sleep(50 * time.Millisecond) // so the drain below takes any second start-up wake-up
	wokenByInsert(a, "for the first listener")
	wokenByInsert(b, "for the second listener")
	if n := listening(); n != 1 {
		t.Errorf("%d LISTEN connections for two listeners of one store, want 1", n)
	}
	stop(a)
	wokenByInsert(b, "after the other listener left")
	stop(b)
	deadline := time.Now().Add(5 * time.Second)
	for listening() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the LISTEN connection outlived its last listener")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestElect(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	elect := func(owner string, ttl time.Duration) bool {
		t.Helper()
		ok, err := s.Elect(t.Context(), owner, ttl)
		if err != nil {
			t.Fatalf("Elect(%s): %v", owner, err)
		}
		return ok
	}
	steps := []struct {
		owner string
		ttl   time.Duration
		sleep time.Duration // before the step
		want  bool
	}{
		{"a", 300 * time.Millisecond, 0, true},
		{"b", 300 * time.Millisecond, 0, false},
		{"a", 300 * time.Millisecond, 0, true}, // a leader extends its own term
		{"b", 300 * time.Millisecond, 0, false},
		{"b", time.Second, 400 * time.Millisecond, true}, // a's term ran out
		{"a", time.Second, 0, false},
	}
	var got []bool
	for _, st := range steps {
		time.Sleep(st.sleep)
		got = append(got, elect(st.owner, st.ttl))
	}
	want := make([]bool, len(steps))
	for i, st := range steps {
		want[i] = st.want
	}
	if !slices.Equal(got, want) {
		t.Errorf("election results %v, want %v", got, want)
	}
}

// A newcomer whose due time is earlier than its line's running head (its
// node's clock is behind, or it read the clock before waiting for the
// key's lock) still runs after the head, not never.
func TestNewcomerBehindRunningHead(t *testing.T) {
	t.Parallel()
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		after func(t *testing.T, s *postgres.Store, head *store.Job) // what happens to the head before the newcomer arrives
	}{
		{"Running", func(*testing.T, *postgres.Store, *store.Job) {}},
		{"BlockingDeadLetter", func(t *testing.T, s *postgres.Store, head *store.Job) {
			t.Helper()
			res, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: base, Finishes: []store.FinishParams{{ID: head.ID,
				Owner: "a", LeaseToken: head.LeaseToken, Outcome: store.OutcomeDiscard, Error: "x", BlockKey: true}}})
			if err != nil || res[0].Fenced {
				t.Fatalf("discard: %v %+v", err, res)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := openTest(t)
			claim := func(now time.Time) []*store.Job {
				t.Helper()
				jobs, err := s.Claim(t.Context(), store.ClaimParams{Now: now, Owner: "a", LeaseUntil: now.Add(time.Hour),
					Limits: []store.KindLimit{{Kind: "k", Max: 10}}, Max: 10})
				if err != nil {
					t.Fatal(err)
				}
				return jobs
			}
			insert := func(now time.Time) *store.Job {
				t.Helper()
				res, err := s.InsertMany(t.Context(), store.InsertManyParams{Now: now,
					Jobs: []store.InsertParams{{Kind: "k", Key: "key", Payload: []byte(`{}`), MaxAttempts: 3}}})
				if err != nil {
					t.Fatal(err)
				}
				return res[0].Job
			}
			insert(base)
			head := claim(base)[0]
			tt.after(t, s, head)
			late := insert(base.Add(-time.Minute)) // a clock a minute behind
			if late.Head || late.DueAt.Before(head.DueAt) {
				t.Errorf("newcomer: Head %v, DueAt %v; want behind the head (due %v)", late.Head, late.DueAt, head.DueAt)
			}
			if got, err := s.Get(t.Context(), late.ID); err != nil || !got.DueAt.Equal(late.DueAt) {
				t.Errorf("Get(newcomer) = %+v, %v; want DueAt %v as InsertMany returned", got, err, late.DueAt)
			}
			if tt.name == "Running" {
				if _, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: base, Finishes: []store.FinishParams{{ID: head.ID,
					Owner: "a", LeaseToken: head.LeaseToken, Outcome: store.OutcomeCompleted}}}); err != nil {
					t.Fatal(err)
				}
			} else if _, err := s.Cancel(t.Context(), head.ID, base); err != nil {
				t.Fatal(err)
			}
			if got := claim(base.Add(time.Second)); len(got) != 1 || got[0].ID != late.ID {
				t.Fatalf("after the head: claimed %v, want the newcomer %d", got, late.ID)
			}
		})
	}
}

// A call without a deadline of its own is bounded by QueryTimeout: a
// node whose connection stops answering fails the call (and retries it)
// instead of hanging. Here the key's lock is held elsewhere.
func TestQueryTimeout(t *testing.T) {
	t.Parallel()
	u := pgtest.SchemaURL(t)
	s, err := postgres.Open(t.Context(), u, postgres.Options{MaxConns: 2, QueryTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	holder, err := pgx.Connect(t.Context(), pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background()) //nolint:errcheck // test connection
	tx, err := holder.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // releases the lock
	// Hold the jobs table, so the insert waits as it would for a server
	// that stopped answering.
	if _, err := tx.Exec(t.Context(), `LOCK TABLE `+pgx.Identifier{s.Schema(), "jobs"}.Sanitize()+` IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.InsertMany(context.Background(), store.InsertManyParams{Now: time.Now(),
		Jobs: []store.InsertParams{{Kind: "k", Key: "k", Payload: []byte(`{}`), MaxAttempts: 1}}})
	if err == nil {
		t.Fatal("InsertMany succeeded while the table was locked")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("InsertMany failed after %s, want about the 300ms query timeout", took)
	}
	if !errors.Is(err, store.ErrCommitUnknown) && !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("error %v; want ErrCommitUnknown or ErrUnavailable (the batch was sent)", err)
	}
}

// drainAll claims and completes kind "k" jobs on s, batch at a time, until
// none is left; it fails after spins claims.
func drainAll(t *testing.T, s *postgres.Store, batch, spins int) {
	t.Helper()
	for range spins {
		now := time.Now()
		jobs, err := s.Claim(t.Context(), store.ClaimParams{Now: now, Owner: "drain", LeaseUntil: now.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: "k", Max: batch}}, Max: batch})
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) == 0 {
			return
		}
		fs := make([]store.FinishParams, len(jobs))
		for i, j := range jobs {
			fs[i] = store.FinishParams{ID: j.ID, Owner: "drain", LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted}
		}
		if _, err := s.FinishMany(t.Context(), store.FinishManyParams{Now: time.Now(), Finishes: fs}); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("could not drain the store")
}
