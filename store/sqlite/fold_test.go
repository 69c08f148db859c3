package sqlite

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/storetest"
)

// The conformance suite with completions folded into their rows after
// every few: each fold runs beside the suite's reads and writes.
func TestConformanceFoldingOften(t *testing.T) {
	t.Parallel()
	storetest.Exercise(t, func(t *testing.T) store.Driver {
		t.Helper()
		s, err := Open(t.Context(), filepath.Join(t.TempDir(), "herald.db"), Options{})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		s.foldAt, s.foldChunk = 3, 2
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// Completions are logged, shown by Get at once, folded into their rows in
// batches, and folded at Open when a process stopped before it could.
func TestCompletionLog(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "herald.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.foldAt, s.foldChunk = 40, 20
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var jobs []store.InsertParams
	for i := range 100 {
		jobs = append(jobs, store.InsertParams{Kind: "k", Key: fmt.Sprintf("key-%d", i%10), Payload: json.RawMessage(`{}`), MaxAttempts: 3})
	}
	if _, err := s.InsertMany(ctx, store.InsertManyParams{Jobs: jobs, Now: now}); err != nil {
		t.Fatal(err)
	}
	claim := func(now time.Time) *store.ClaimParams {
		return &store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Hour), Limits: []store.KindLimit{{Kind: "k", Max: 10}}, Max: 10}
	}
	running, err := s.Claim(ctx, *claim(now))
	if err != nil {
		t.Fatal(err)
	}
	finished := map[int64]time.Time{} // id -> finish time
	maxLogged := 0
	for step := 0; len(running) > 0; step++ {
		now = now.Add(time.Second)
		var fs []store.FinishParams
		for _, j := range running {
			fs = append(fs, store.FinishParams{ID: j.ID, Owner: "o", LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted})
			finished[j.ID] = now
		}
		res, err := s.Exchange(ctx, store.ExchangeParams{Now: now, Finishes: fs, Claim: claim(now)})
		if err != nil {
			t.Fatal(err)
		}
		running = res.Claimed
		maxLogged = max(maxLogged, s.done.len())
		if step == 2 {
			// Logged, not folded yet: the row still says available, Get
			// says completed.
			id := fs[0].ID
			var state int
			if err := s.writer.QueryRowContext(ctx, `SELECT state FROM herald_jobs WHERE id = ?`, id).Scan(&state); err != nil || state != stAvailable {
				t.Fatalf("row of job %d just completed: state %d, %v; want the completion logged, not written", id, state, err)
			}
			checkCompleted(t, s, id, now)
		}
	}
	if len(finished) != 100 {
		t.Fatalf("%d jobs completed, want 100", len(finished))
	}
	// Folds kept the log short: at most the threshold plus one cycle.
	if maxLogged > 40+10 {
		t.Errorf("log held up to %d completions, want a fold once it holds 40", maxLogged)
	}
	var folded int
	if err := s.writer.QueryRowContext(ctx, `SELECT count(*) FROM herald_jobs WHERE state = 4`).Scan(&folded); err != nil || folded < 60 {
		t.Fatalf("%d rows folded (%v), want at least 60 of 100", folded, err)
	}
	logged := s.done.len()
	if logged == 0 {
		t.Fatal("nothing left in the log: the restart below would test nothing")
	}
	// A process that dies leaves the rest in the log, and Open folds it:
	// a copy of the files taken now is what a crash would leave.
	crashed := filepath.Join(t.TempDir(), "herald.db")
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(path + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crashed+suffix, b, 0o600); err != nil { //nolint:gosec // a test temp dir
			t.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite", "file:"+crashed)
	if err != nil {
		t.Fatal(err)
	}
	var inLog int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM herald_done_log`).Scan(&inLog); err != nil || inLog == 0 {
		t.Fatalf("the crash copy holds %d log rows (%v); the test needs some", inLog, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// A clean Close folds it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{crashed, path} {
		s, err := Open(ctx, p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var rows, left int
		if err := s.writer.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM herald_done_log),
			(SELECT count(*) FROM herald_jobs WHERE state <> 4)`).Scan(&rows, &left); err != nil || rows != 0 || left != 0 || s.done.len() != 0 {
			t.Fatalf("%s reopened: %d log rows, %d rows not completed, %d in memory (%v); want all %d folded", p, rows, left, s.done.len(), err, logged)
		}
		for id, at := range finished {
			checkCompleted(t, s, id, at)
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}
}

func checkCompleted(t *testing.T, s *Store, id int64, at time.Time) {
	t.Helper()
	j, err := s.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != store.StateCompleted || j.Attempt != 1 || !j.FinishedAt.Equal(at) || j.StartedAt.IsZero() || j.Head {
		t.Fatalf("job %d = state %s, attempt %d, started %s, finished %s, head %v; want completed on attempt 1 at %s",
			id, j.State, j.Attempt, j.StartedAt, j.FinishedAt, j.Head, at)
	}
}

// A reader polling a job while its attempt completes sees it running,
// then completed together with what the attempt recorded: never a
// completion paired with a row read before the commit, and never the
// pending state its row keeps until the fold.
func TestCompletedJobShowsItsOutput(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "herald.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	claim := store.ClaimParams{Now: now, Owner: "o", LeaseUntil: now.Add(time.Hour), Limits: []store.KindLimit{{Kind: "k", Max: 1}}, Max: 1}
	for i := range 300 {
		key := fmt.Sprintf("key-%d", i)
		if _, err := s.InsertMany(ctx, store.InsertManyParams{Now: now,
			Jobs: []store.InsertParams{{Kind: "k", Key: key, Payload: json.RawMessage(`{}`), MaxAttempts: 1}}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Claim(ctx, claim)
		if err != nil || len(got) != 1 {
			t.Fatalf("claim: %v, %v", got, err)
		}
		j := got[0]
		seen := make(chan error, 1)
		go func() {
			for {
				r, err := s.Get(ctx, j.ID)
				if err != nil {
					seen <- err
					return
				}
				if r.State != store.StateRunning && r.State != store.StateCompleted {
					seen <- fmt.Errorf("job %d, claimed, then completed, read as %s", j.ID, r.State)
					return
				}
				if r.State == store.StateCompleted {
					if string(r.Output) != `{"sent":true}` {
						seen <- fmt.Errorf("job %d completed with output %q", j.ID, r.Output)
						return
					}
					seen <- nil
					return
				}
			}
		}()
		if _, err := s.Exchange(ctx, store.ExchangeParams{Now: now, Finishes: []store.FinishParams{{ID: j.ID, Owner: "o",
			LeaseToken: j.LeaseToken, Outcome: store.OutcomeCompleted, Output: json.RawMessage(`{"sent":true}`)}}}); err != nil {
			t.Fatal(err)
		}
		if err := <-seen; err != nil {
			t.Fatal(err)
		}
	}
}
