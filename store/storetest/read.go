package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldmq/herald/store"
)

func exerciseGet(t *testing.T, setup func(t *testing.T) *bundle) {
	t.Run("Found", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		j := b.insertOne(base, params(kindEmail, "k"))
		got := b.get(j.ID)
		if diff := cmp.Diff(j, got, timeEqual); diff != "" {
			t.Fatalf("Get differs from what InsertMany returned (-insert +get):\n%s", diff)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		j := b.insertOne(base, params(kindEmail, "k"))
		for _, id := range []int64{j.ID + 1, j.ID + 1000, 0, -1} {
			got, err := b.d.Get(t.Context(), id)
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Get(%d) = %v, %v; want ErrNotFound", id, got, err)
			}
		}
	})
}

func exerciseList(t *testing.T, setup func(t *testing.T) *bundle) {
	b := setup(t)
	jobs := b.insert(base,
		params(kindEmail, "a"),                      // 0: running after the claim below
		params(kindEmail, "a"),                      // 1: available, waiting
		params(kindWebhook, "b"),                    // 2: completed
		params(kindWebhook, "b"),                    // 3: available head after 2 completes
		scheduled(kindEmail, "", at(time.Hour)),     // 4: scheduled until +1h
		params(kindWebhook, ""),                     // 5: available
		scheduled(kindEmail, "c", at(2*time.Hour)),  // 6: scheduled until +2h
		scheduled(kindWebhook, "", at(time.Minute)), // 7: scheduled until +1m
	)
	claimed := b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(time.Hour),
		Limits: []store.KindLimit{{Kind: kindEmail, Max: 1}, {Kind: kindWebhook, Max: 1}}, Max: 2})
	wantJobs(t, "setup claim", claimed, jobs[0], jobs[2])
	b.complete(at(time.Second), b.get(jobs[2].ID))

	now := at(30 * time.Second)
	j := func(is ...int) []int64 {
		out := make([]int64, len(is))
		for n, i := range is {
			out[n] = jobs[i].ID
		}
		return out
	}
	tests := []struct {
		name string
		p    store.ListParams
		want []int64
	}{
		{"All", store.ListParams{}, j(0, 1, 2, 3, 4, 5, 6, 7)},
		{"Kind", store.ListParams{Kind: kindWebhook}, j(2, 3, 5, 7)},
		{"Key", store.ListParams{Key: "a"}, j(0, 1)},
		{"KindAndKey", store.ListParams{Kind: kindWebhook, Key: "b"}, j(2, 3)},
		{"NoMatch", store.ListParams{Kind: "sms"}, j()},
		{"Running", store.ListParams{State: store.StateRunning}, j(0)},
		{"Completed", store.ListParams{State: store.StateCompleted}, j(2)},
		{"Available", store.ListParams{State: store.StateAvailable}, j(1, 3, 5)},
		{"Scheduled", store.ListParams{State: store.StateScheduled}, j(4, 6, 7)},
		{"AvailableLater", store.ListParams{State: store.StateAvailable, Now: at(90 * time.Minute)}, j(1, 3, 4, 5, 7)},
		{"ScheduledLater", store.ListParams{State: store.StateScheduled, Now: at(90 * time.Minute)}, j(6)},
		{"StateAndKind", store.ListParams{State: store.StateScheduled, Kind: kindEmail}, j(4, 6)},
		{"AfterID", store.ListParams{AfterID: jobs[4].ID}, j(5, 6, 7)},
		{"AfterLast", store.ListParams{AfterID: jobs[7].ID}, j()},
		{"Limit", store.ListParams{Limit: 3}, j(0, 1, 2)},
		{"AfterIDAndLimit", store.ListParams{AfterID: jobs[1].ID, Limit: 2}, j(2, 3)},
		{"AfterIDWithFilter", store.ListParams{AfterID: jobs[2].ID, Kind: kindWebhook, Limit: 1}, j(3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := b.with(t)
			p := tt.p
			if p.Now.IsZero() {
				p.Now = now
			}
			if got := ids(b.list(p)); !slices.Equal(got, tt.want) && !(len(got) == 0 && len(tt.want) == 0) {
				t.Errorf("List(%+v) = %v, want %v", p, got, tt.want)
			}
		})
	}
	t.Run("StatesMatchFilter", func(t *testing.T) {
		b := b.with(t)
		for _, s := range []store.State{store.StateAvailable, store.StateScheduled, store.StateRunning, store.StateCompleted} {
			for _, job := range b.list(store.ListParams{State: s, Now: now}) {
				if job.State != s {
					t.Errorf("List(State %s) returned job %d in state %s", s, job.ID, job.State)
				}
			}
		}
	})
	t.Run("Pages", func(t *testing.T) {
		b := b.with(t)
		var got []int64
		var after int64
		for range 10 {
			page := b.list(store.ListParams{AfterID: after, Limit: 3, Now: now})
			if len(page) > 3 {
				t.Fatalf("page of %d jobs with Limit 3", len(page))
			}
			if len(page) == 0 {
				break
			}
			got = append(got, ids(page)...)
			after = page[len(page)-1].ID
		}
		if want := j(0, 1, 2, 3, 4, 5, 6, 7); !slices.Equal(got, want) {
			t.Fatalf("paging with AfterID gave %v, want %v", got, want)
		}
	})
}

func exerciseLine(t *testing.T, setup func(t *testing.T) *bundle) {
	b := setup(t)
	jobs := b.insert(base, params(kindEmail, "k"), params(kindEmail, "k"), params(kindEmail, "k"), params(kindWebhook, "other"))
	check := func(key, step string, pending int64, head *store.Job, headState store.State) {
		t.Helper()
		l := b.line(key)
		if l.Key != key {
			t.Errorf("%s: Line.Key = %q, want %q", step, l.Key, key)
		}
		if l.Pending != pending {
			t.Errorf("%s: Pending = %d, want %d", step, l.Pending, pending)
		}
		switch {
		case head == nil && l.Head != nil:
			t.Errorf("%s: Head = job %d, want none", step, l.Head.ID)
		case head != nil && l.Head == nil:
			t.Errorf("%s: no Head, want job %d", step, head.ID)
		case head != nil && (l.Head.ID != head.ID || l.Head.State != headState || !l.Head.Head):
			t.Errorf("%s: Head = job %d (%s, Head %v), want job %d (%s, Head true)", step, l.Head.ID, l.Head.State, l.Head.Head, head.ID, headState)
		}
	}
	claimEmail := func(now time.Time) *store.Job {
		t.Helper()
		got := b.claimWith(store.ClaimParams{Now: now, Owner: owner1, LeaseUntil: now.Add(time.Minute),
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 10}}, Max: 10})
		if len(got) != 1 {
			t.Fatalf("claim got %v, want one job", ids(got))
		}
		return got[0]
	}
	check("k", "inserted", 3, jobs[0], store.StateAvailable)
	check("other", "other key", 1, jobs[3], store.StateAvailable)
	check("unknown", "unknown key", 0, nil, "")

	running := claimEmail(base)
	check("k", "head running", 3, jobs[0], store.StateRunning)
	b.complete(at(time.Second), running)
	check("k", "head completed", 2, jobs[1], store.StateAvailable)

	b.discard(at(2*time.Second), claimEmail(at(time.Second)), true)
	check("k", "blocked by a dead letter", 2, jobs[1], store.StateDiscarded)

	if _, err := b.d.Cancel(t.Context(), jobs[2].ID, at(3*time.Second)); err != nil {
		t.Fatalf("Cancel(%d): %v", jobs[2].ID, err)
	}
	check("k", "only the dead letter left", 1, jobs[1], store.StateDiscarded)
	if _, err := b.d.Cancel(t.Context(), jobs[1].ID, at(4*time.Second)); err != nil {
		t.Fatalf("Cancel(%d): %v", jobs[1].ID, err)
	}
	check("k", "all finalized", 0, nil, "")
}

func exerciseStats(t *testing.T, setup func(t *testing.T) *bundle) {
	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		st := b.stats(base)
		if len(st.ByKindState) != 0 || st.ReadyKeys != 0 || !st.OldestPendingDueAt.IsZero() {
			t.Fatalf("Stats of an empty store = %+v", st)
		}
	})

	t.Run("Counts", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jobs := b.insert(base,
			params(kindEmail, "a"),                      // 0: available head
			params(kindEmail, "a"),                      // 1: available, waiting
			params(kindEmail, "b"),                      // 2: running
			params(kindEmail, "b"),                      // 3: available, waiting
			params(kindEmail, "c"),                      // 4: blocking dead letter
			params(kindEmail, "c"),                      // 5: available, blocked
			scheduled(kindEmail, "", at(time.Hour)),     // 6: scheduled until +1h
			params(kindWebhook, ""),                     // 7: completed
			params(kindWebhook, ""),                     // 8: retryable until +10m
			scheduled(kindWebhook, "", at(time.Minute)), // 9: due at +1m
		)
		claimed := b.claimWith(store.ClaimParams{Now: base, Owner: owner1, LeaseUntil: at(time.Hour),
			Limits: []store.KindLimit{{Kind: kindEmail, Max: 10}, {Kind: kindWebhook, Max: 10}}, Max: 100})
		wantJobs(t, "setup claim", claimed, jobs[0], jobs[2], jobs[4], jobs[7], jobs[8])
		b.finish(at(time.Second),
			store.FinishParams{ID: jobs[0].ID, Owner: owner1, Outcome: store.OutcomeRelease},
			store.FinishParams{ID: jobs[4].ID, Owner: owner1, Outcome: store.OutcomeDiscard, Error: "e", BlockKey: true},
			store.FinishParams{ID: jobs[7].ID, Owner: owner1, Outcome: store.OutcomeCompleted},
			store.FinishParams{ID: jobs[8].ID, Owner: owner1, Outcome: store.OutcomeRetry, Error: "e", RetryAt: at(10 * time.Minute)},
		)
		tests := []struct {
			name      string
			now       time.Time
			byKind    map[string]map[store.State]int64
			readyKeys int64
		}{
			{
				name: "Soon",
				now:  at(2 * time.Second),
				byKind: map[string]map[store.State]int64{
					kindEmail:   {store.StateAvailable: 4, store.StateRunning: 1, store.StateDiscarded: 1, store.StateScheduled: 1},
					kindWebhook: {store.StateCompleted: 1, store.StateRetryable: 1, store.StateScheduled: 1},
				},
				readyKeys: 1, // a
			},
			{
				name: "AfterScheduledJobsAreDue",
				now:  at(2 * time.Hour),
				byKind: map[string]map[store.State]int64{
					kindEmail:   {store.StateAvailable: 5, store.StateRunning: 1, store.StateDiscarded: 1},
					kindWebhook: {store.StateCompleted: 1, store.StateRetryable: 1, store.StateAvailable: 1},
				},
				readyKeys: 4, // a, the unordered email, the retryable and the scheduled webhook
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				st := b.with(t).stats(tt.now)
				if diff := cmp.Diff(tt.byKind, st.ByKindState); diff != "" {
					t.Errorf("ByKindState (-want +got):\n%s", diff)
				}
				if st.ReadyKeys != tt.readyKeys {
					t.Errorf("ReadyKeys = %d, want %d", st.ReadyKeys, tt.readyKeys)
				}
				wantTime(t, "OldestPendingDueAt", st.OldestPendingDueAt, base)
			})
		}
	})

	// Pending means scheduled, available or retryable (package store): a
	// running job is not pending, but the jobs waiting behind it are.
	t.Run("OldestPendingDueAt", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.insertOne(base, params(kindEmail, "k"))
		running := b.claimOne(base)
		wantTime(t, "OldestPendingDueAt with only a running job", b.stats(at(time.Second)).OldestPendingDueAt, time.Time{})

		b.insertOne(at(time.Minute), params(kindEmail, "k"))
		b.insertOne(at(2*time.Minute), scheduled(kindEmail, "", at(time.Hour)))
		wantTime(t, "OldestPendingDueAt behind a running head", b.stats(at(3*time.Minute)).OldestPendingDueAt, at(time.Minute))

		b.complete(at(4*time.Minute), running)
		wantTime(t, "OldestPendingDueAt after the head completed", b.stats(at(5*time.Minute)).OldestPendingDueAt, at(time.Minute))
	})
}
