package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
)

func TestEnqueue(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})

	tests := []struct {
		name      string
		body      string
		wantState string
		wantRunAt func(created time.Time) (time.Time, time.Time) // bounds
	}{
		{
			name:      "payload stored verbatim",
			body:      `{"kind":"idle","key":"acct-1","payload":{"b":2, "a":[1,2.50,"é"],"n":12345678901234567890123}}`,
			wantState: "",
		},
		{
			name:      "delay as duration string",
			body:      `{"kind":"noop","key":"acct-2","payload":null,"delay":"1h"}`,
			wantState: "scheduled",
			wantRunAt: func(c time.Time) (time.Time, time.Time) { return c.Add(59 * time.Minute), c.Add(61 * time.Minute) },
		},
		{
			name:      "run_at",
			body:      `{"kind":"noop","payload":1,"run_at":"2099-01-02T03:04:05.123Z","max_attempts":3}`,
			wantState: "scheduled",
			wantRunAt: func(time.Time) (time.Time, time.Time) {
				at := time.Date(2099, 1, 2, 3, 4, 5, 123e6, time.UTC)
				return at, at
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := b.do(http.MethodPost, "/v1/jobs", tt.body)
			if rec.Code != http.StatusCreated {
				t.Fatalf("status = %d; body %s", rec.Code, rec.Body)
			}
			j := decode[jobJSONTest](t, rec)
			if loc := rec.Header().Get("Location"); loc != j.path() {
				t.Errorf("Location = %q; want %q", loc, j.path())
			}
			var req struct {
				Kind    string
				Key     string
				Payload json.RawMessage
			}
			mustUnmarshal(t, tt.body, &req)
			if j.Kind != req.Kind || j.Key != req.Key {
				t.Errorf("kind, key = %q, %q; want %q, %q", j.Kind, j.Key, req.Kind, req.Key)
			}
			if got, want := compact(t, j.Payload), compact(t, req.Payload); got != want {
				t.Errorf("payload = %s; want %s", got, want)
			}
			if j.CreatedAt == nil || j.RunAt == nil || j.Errors == nil {
				t.Fatalf("created_at, run_at or errors missing: %s", rec.Body)
			}
			if !strings.Contains(rec.Body.String(), `Z"`) {
				t.Errorf("times are not UTC RFC 3339: %s", rec.Body)
			}
			if tt.wantState != "" && j.State != tt.wantState {
				t.Errorf("state = %q; want %q", j.State, tt.wantState)
			}
			if tt.wantRunAt != nil {
				lo, hi := tt.wantRunAt(*j.CreatedAt)
				if j.RunAt.Before(lo) || j.RunAt.After(hi) {
					t.Errorf("run_at = %v; want in [%v, %v]", j.RunAt, lo, hi)
				}
			}

			// GET returns the same job, payload byte for byte.
			rec = b.do(http.MethodGet, j.path(), "")
			if rec.Code != http.StatusOK {
				t.Fatalf("GET %s = %d %s", j.path(), rec.Code, rec.Body)
			}
			got := decode[jobJSONTest](t, rec)
			if got.ID != j.ID || string(got.Payload) != string(j.Payload) {
				t.Errorf("GET = %+v; want %+v", got, j)
			}
			stored, err := b.client.Get(t.Context(), j.ID)
			if err != nil {
				t.Fatal(err)
			}
			if compact(t, stored.Payload) != compact(t, req.Payload) {
				t.Errorf("stored payload = %s; want %s", stored.Payload, req.Payload)
			}
		})
	}
}

func TestEnqueueIdempotency(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	body := `{"kind":"noop","key":"k","payload":{"n":1},"idempotency_key":"order-7"}`
	first := b.do(http.MethodPost, "/v1/jobs", body)
	if first.Code != http.StatusCreated {
		t.Fatalf("first = %d %s", first.Code, first.Body)
	}
	second := b.do(http.MethodPost, "/v1/jobs", body)
	if second.Code != http.StatusOK {
		t.Fatalf("second = %d %s; want 200", second.Code, second.Body)
	}
	if a, c := decode[jobJSONTest](t, first).ID, decode[jobJSONTest](t, second).ID; a != c {
		t.Errorf("ids %d and %d; want the same job", a, c)
	}
	if n := len(b.storedJobs(t)); n != 1 {
		t.Errorf("%d jobs stored; want 1", n)
	}
}

func TestBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	rec := b.do(http.MethodPost, "/v1/jobs/batch", `{"jobs":[
		{"kind":"idle","key":"a","payload":{"i":0}},
		{"kind":"idle","key":"a","payload":{"i":1},"delay":"10m"},
		{"kind":"idle","payload":[1,2,3]}]}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("status = %d %s", rec.Code, rec.Body)
	}
	ids := decode[struct {
		IDs []int64 `json:"ids"`
	}](t, rec).IDs
	if len(ids) != 3 || ids[0] >= ids[1] || ids[1] >= ids[2] {
		t.Fatalf("ids = %v; want 3 ascending", ids)
	}
	for i, id := range ids {
		j, err := b.client.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprint(i); i < 2 && !strings.Contains(string(j.Payload), want) {
			t.Errorf("job %d payload %s", i, j.Payload)
		}
	}
}

// TestBatchAllOrNothing: one bad job refuses the whole batch and stores nothing.
func TestBatchAllOrNothing(t *testing.T) {
	t.Parallel()
	good := `{"kind":"noop","key":"a","payload":{}}`
	many := func(n int) string {
		return `{"jobs":[` + strings.TrimSuffix(strings.Repeat(good+",", n), ",") + `]}`
	}
	tests := []struct {
		name      string
		opts      Options
		body      string
		status    int
		code      string
		wantField string
	}{
		{"unknown kind", Options{}, `{"jobs":[` + good + `,{"kind":"nope","payload":{}}]}`, 422, "unknown_kind", "jobs[1].kind"},
		{"wrong type", Options{}, `{"jobs":[` + good + `,` + good + `,{"kind":"noop","key":7,"payload":{}}]}`, 400, "invalid_type", "jobs[2].key"},
		{"unknown field", Options{}, `{"jobs":[{"kind":"noop","payload":{},"priority":1}]}`, 400, "unknown_field", "jobs[0].priority"},
		{"missing payload", Options{}, `{"jobs":[` + good + `,{"kind":"noop"}]}`, 400, "invalid_field", "jobs[1].payload"},
		{"invalid UTF-8", Options{}, `{"jobs":[` + good + `,{"kind":"noop","key":"` + "\xff" + `","payload":{}}]}`, 400, "invalid_utf8", "jobs[1].key"},
		{"NUL in key", Options{}, `{"jobs":[` + good + `,{"kind":"noop","key":"a\u0000b","payload":{}}]}`, 400, "invalid_field", "jobs[1].key"},
		{"run_at and delay", Options{}, `{"jobs":[{"kind":"noop","payload":{},"delay":"1s","run_at":"2030-01-01T00:00:00Z"}]}`, 400, "invalid_field", "jobs[0].delay"},
		{"empty", Options{}, `{"jobs":[]}`, 400, "invalid_field", "jobs"},
		{"no jobs field", Options{}, `{}`, 400, "invalid_field", "jobs"},
		{"over the configured limit", Options{MaxBatchJobs: 3}, many(4), 413, "batch_too_large", "jobs"},
		{"over 10,000", Options{}, many(10_001), 413, "batch_too_large", "jobs"},
		{"top-level unknown field", Options{}, `{"jobs":[` + good + `],"x":1}`, 400, "unknown_field", "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.opts)
			rec := b.do(http.MethodPost, "/v1/jobs/batch", tt.body)
			checkError(t, rec, tt.status, tt.code, tt.wantField)
			if jobs := b.storedJobs(t); len(jobs) != 0 {
				t.Errorf("%d jobs stored after a refused batch; want 0", len(jobs))
			}
		})
	}
}

func TestEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{Topics: map[string]Topic{
		"signup": {Kind: "idle", KeyField: "account_id"},
		"ping":   {Kind: "idle"},
	}})
	tests := []struct {
		name    string
		topic   string
		body    string
		status  int
		wantKey string
		code    string
		field   string
	}{
		{name: "string key", topic: "signup", body: `{"account_id":"acct-9","email":"a@example.com"}`, status: 201, wantKey: "acct-9"},
		{name: "number key", topic: "signup", body: `{"account_id":42, "nested":{"x":[1,2]}}` + "\n", status: 201, wantKey: "42"},
		{name: "no key field", topic: "ping", body: `{"at":1}`, status: 201, wantKey: ""},
		{name: "key field missing", topic: "signup", body: `{"user":"x"}`, status: 422, code: "missing_key_field", field: "account_id"},
		{name: "key field not scalar", topic: "signup", body: `{"account_id":{"id":1}}`, status: 422, code: "invalid_key_field", field: "account_id"},
		{name: "key field null", topic: "signup", body: `{"account_id":null}`, status: 422, code: "invalid_key_field", field: "account_id"},
		{name: "key with NUL", topic: "signup", body: `{"account_id":"a\u0000"}`, status: 400, code: "invalid_field", field: "account_id"},
		{name: "unknown topic", topic: "nope", body: `{"account_id":"x"}`, status: 404, code: "unknown_topic"},
		{name: "not an object", topic: "ping", body: `[1,2]`, status: 400, code: "invalid_type"},
		{name: "null", topic: "ping", body: `null`, status: 400, code: "invalid_type"},
		{name: "malformed", topic: "ping", body: `{"a":`, status: 400, code: "malformed_json"},
		{name: "trailing data", topic: "ping", body: `{"a":1} {"b":2}`, status: 400, code: "malformed_json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := b.do(http.MethodPost, "/v1/events/"+tt.topic, tt.body)
			if tt.status != http.StatusCreated {
				checkError(t, rec, tt.status, tt.code, tt.field)
				return
			}
			if rec.Code != http.StatusCreated {
				t.Fatalf("status = %d %s", rec.Code, rec.Body)
			}
			got := decode[struct {
				ID  int64       `json:"id"`
				Job jobJSONTest `json:"job"`
			}](t, rec)
			if got.ID != got.Job.ID || got.Job.Kind != "idle" || got.Job.Key != tt.wantKey {
				t.Errorf("got id %d job %+v; want kind idle key %q", got.ID, got.Job, tt.wantKey)
			}
			stored, err := b.client.Get(t.Context(), got.ID)
			if err != nil {
				t.Fatal(err)
			}
			if string(stored.Payload) != tt.body {
				t.Errorf("stored payload %q; want the body unchanged %q", stored.Payload, tt.body)
			}
		})
	}

	t.Run("idempotency header", func(t *testing.T) {
		t.Parallel()
		statuses := make([]int, 2)
		for i := range statuses {
			r := b.newRequest(http.MethodPost, "/v1/events/ping", []byte(`{"n":1}`))
			r.Header.Set("Idempotency-Key", "evt-1")
			statuses[i] = b.serve(r).Code
		}
		if statuses[0] != http.StatusCreated || statuses[1] != http.StatusOK {
			t.Errorf("statuses = %v; want [201 200]", statuses)
		}
	})
}

func TestListJobs(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	var ids []int64
	for i := range 5 {
		j := b.enqueue(t, fmt.Sprintf(`{"kind":"noop","key":"list-%d","payload":{"i":%d},"delay":"1h"}`, i%2, i))
		ids = append(ids, j.ID)
	}
	b.enqueue(t, `{"kind":"idle","key":"other","payload":{},"delay":"1h"}`)

	type page struct {
		Jobs       []jobJSONTest `json:"jobs"`
		NextCursor *string       `json:"next_cursor"`
	}
	t.Run("pages", func(t *testing.T) {
		t.Parallel()
		var got []int64
		cursor := ""
		for range 10 {
			rec := b.do(http.MethodGet, "/v1/jobs?kind=noop&limit=2&cursor="+cursor, "")
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			p := decode[page](t, rec)
			for _, j := range p.Jobs {
				got = append(got, j.ID)
			}
			if p.NextCursor == nil {
				break
			}
			if *p.NextCursor != strconv.FormatInt(p.Jobs[len(p.Jobs)-1].ID, 10) {
				t.Errorf("next_cursor %q is not the last id", *p.NextCursor)
			}
			cursor = *p.NextCursor
		}
		if fmt.Sprint(got) != fmt.Sprint(ids) {
			t.Errorf("paged ids = %v; want %v", got, ids)
		}
	})

	filters := []struct {
		query string
		want  int
	}{
		{"", 6},
		{"?state=scheduled", 6},
		{"?state=completed", 0},
		{"?key=list-0", 3},
		{"?key=list-1&kind=noop", 2},
		{"?kind=idle", 1},
	}
	for _, f := range filters {
		t.Run("filter "+f.query, func(t *testing.T) {
			t.Parallel()
			rec := b.do(http.MethodGet, "/v1/jobs"+f.query, "")
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			p := decode[page](t, rec)
			if len(p.Jobs) != f.want || p.NextCursor != nil {
				t.Errorf("%d jobs, next %v; want %d, none", len(p.Jobs), p.NextCursor, f.want)
			}
		})
	}

	bad := []struct{ query, field string }{
		{"?state=sleeping", "state"},
		{"?limit=0", "limit"},
		{"?limit=1001", "limit"},
		{"?limit=ten", "limit"},
		{"?cursor=-1", "cursor"},
		{"?cursor=abc", "cursor"},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.query, func(t *testing.T) {
			t.Parallel()
			checkError(t, b.do(http.MethodGet, "/v1/jobs"+tt.query, ""), http.StatusBadRequest, "invalid_field", tt.field)
		})
	}
}

func TestRetryCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	j := b.enqueue(t, `{"kind":"noop","key":"rc","payload":{},"delay":"1h"}`)

	steps := []struct {
		name, method, path string
		status             int
		code, state        string
	}{
		{"cancel scheduled", http.MethodPost, j.path() + "/cancel", 200, "", "cancelled"},
		{"cancel again", http.MethodPost, j.path() + "/cancel", 409, "wrong_state", ""},
		{"get cancelled", http.MethodGet, j.path(), 200, "", "cancelled"},
		{"retry cancelled", http.MethodPost, j.path() + "/retry", 200, "", ""},
		{"retry unknown", http.MethodPost, "/v1/jobs/999999/retry", 404, "not_found", ""},
		{"cancel unknown", http.MethodPost, "/v1/jobs/999999/cancel", 404, "not_found", ""},
		{"get unknown", http.MethodGet, "/v1/jobs/999999", 404, "not_found", ""},
		{"bad id", http.MethodGet, "/v1/jobs/abc", 400, "invalid_field", ""},
		{"zero id", http.MethodPost, "/v1/jobs/0/retry", 400, "invalid_field", ""},
	}
	// Steps depend on each other: run in order.
	for _, s := range steps {
		rec := b.do(s.method, s.path, "")
		if s.status >= 400 {
			field := ""
			if s.code == "invalid_field" {
				field = "id"
			}
			checkError(t, rec, s.status, s.code, field)
			continue
		}
		if rec.Code != s.status {
			t.Fatalf("%s: status %d %s", s.name, rec.Code, rec.Body)
		}
		got := decode[jobJSONTest](t, rec)
		if s.state != "" && got.State != s.state {
			t.Errorf("%s: state %q; want %q", s.name, got.State, s.state)
		}
	}
	b.waitState(t, j.ID, herald.StateCompleted) // the retry ran it
}

func TestKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	if rec := b.do(http.MethodPost, "/v1/kinds/idle/pause", ""); rec.Code != http.StatusOK {
		t.Fatalf("pause: %d %s", rec.Code, rec.Body)
	}
	tests := []struct {
		name, key, enqueue string
		waitFor            herald.JobState
		want               string
		wantPending        int64
		wantTime           string // "retry_at" or "run_at" must be set
	}{
		{name: "empty", key: "nobody", want: "empty"},
		{name: "scheduled", key: "k-sched", enqueue: `{"kind":"noop","key":"k-sched","payload":{},"delay":"1h"}`, want: "scheduled", wantPending: 1, wantTime: "run_at"},
		{name: "ready", key: "k-ready", enqueue: `{"kind":"idle","key":"k-ready","payload":{}}`, want: "ready", wantPending: 1},
		{name: "running", key: "k-run", enqueue: `{"kind":"block","key":"k-run","payload":{}}`, waitFor: herald.StateRunning, want: "running", wantPending: 1},
		{name: "retry_at", key: "k-retry", enqueue: `{"kind":"flaky","key":"k-retry","payload":{}}`, waitFor: herald.StateRetryable, want: "retry_at", wantPending: 1, wantTime: "retry_at"},
		{name: "blocked", key: "k-dead", enqueue: `{"kind":"fatal","key":"k-dead","payload":{}}`, waitFor: herald.StateDiscarded, want: "blocked", wantPending: 1},
		{name: "slash and space", key: "a/b c", enqueue: `{"kind":"idle","key":"a/b c","payload":{}}`, want: "ready", wantPending: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.enqueue != "" {
				j := b.enqueue(t, tt.enqueue)
				if tt.waitFor != "" {
					b.waitState(t, j.ID, tt.waitFor)
				}
			}
			rec := b.do(http.MethodGet, "/v1/keys/"+escapePath(tt.key), "")
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			got := decode[struct {
				Key       string       `json:"key"`
				Pending   int64        `json:"pending"`
				Head      *jobJSONTest `json:"head"`
				WaitingOn string       `json:"waiting_on"`
				RetryAt   *time.Time   `json:"retry_at"`
				RunAt     *time.Time   `json:"run_at"`
			}](t, rec)
			if got.Key != tt.key || got.WaitingOn != tt.want || got.Pending != tt.wantPending {
				t.Errorf("got key %q waiting_on %q pending %d; want %q %q %d (%s)",
					got.Key, got.WaitingOn, got.Pending, tt.key, tt.want, tt.wantPending, rec.Body)
			}
			if (got.Head == nil) != (tt.want == "empty") {
				t.Errorf("head = %v for waiting_on %q", got.Head, tt.want)
			}
			if (got.RetryAt != nil) != (tt.wantTime == "retry_at") || (got.RunAt != nil) != (tt.wantTime == "run_at") {
				t.Errorf("retry_at %v, run_at %v; want %s set", got.RetryAt, got.RunAt, tt.wantTime)
			}
		})
	}
	t.Run("invalid UTF-8", func(t *testing.T) {
		t.Parallel()
		checkError(t, b.do(http.MethodGet, "/v1/keys/%FF", ""), http.StatusBadRequest, "invalid_field", "key")
	})
}

func escapePath(s string) string {
	return strings.NewReplacer("/", "%2F", " ", "%20").Replace(s)
}

func TestStats(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	b.enqueue(t, `{"kind":"noop","key":"s","payload":{},"delay":"1h"}`)
	done := b.enqueue(t, `{"kind":"noop","key":"s2","payload":{}}`)
	b.waitState(t, done.ID, herald.StateCompleted)

	rec := b.do(http.MethodGet, "/v1/stats", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d %s", rec.Code, rec.Body)
	}
	got := decode[struct {
		ByState                 map[string]int64            `json:"by_state"`
		ByKind                  map[string]map[string]int64 `json:"by_kind"`
		ReadyKeys               int64                       `json:"ready_keys"`
		OldestPendingAgeSeconds float64                     `json:"oldest_pending_age_seconds"`
		Counters                struct {
			Enqueued, Started, Completed, Failed, Discarded, Released, Fenced, Pruned int64
			Running                                                                   int
			ByKind                                                                    map[string]map[string]any `json:"by_kind"`
		} `json:"counters"`
	}](t, rec)
	if len(got.ByState) != 7 || got.ByState["scheduled"] != 1 || got.ByState["completed"] != 1 {
		t.Errorf("by_state = %v", got.ByState)
	}
	if got.ByKind["noop"]["scheduled"] != 1 {
		t.Errorf("by_kind = %v", got.ByKind)
	}
	if got.Counters.Enqueued != 2 || got.Counters.Completed != 1 {
		t.Errorf("counters = %+v", got.Counters)
	}
	if _, ok := got.Counters.ByKind["noop"]["paused"]; !ok {
		t.Errorf("counters.by_kind = %v; want noop with paused", got.Counters.ByKind)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	tests := []struct {
		path       string
		status     int
		wantPaused bool
	}{
		{"/v1/kinds/noop/pause", 200, true},
		{"/v1/kinds/noop/resume", 200, false},
		{"/v1/kinds/nope/pause", 404, false},
		{"/v1/kinds/nope/resume", 404, false},
	}
	for _, tt := range tests {
		rec := b.do(http.MethodPost, tt.path, "")
		if tt.status != http.StatusOK {
			checkError(t, rec, tt.status, "unknown_kind", "kind")
			continue
		}
		got := decode[struct {
			Kind   string `json:"kind"`
			Paused bool   `json:"paused"`
		}](t, rec)
		if got.Kind != "noop" || got.Paused != tt.wantPaused {
			t.Errorf("%s = %+v", tt.path, got)
		}
		m, err := b.client.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if m.ByKind["noop"].Paused != tt.wantPaused {
			t.Errorf("%s: client says paused=%v", tt.path, m.ByKind["noop"].Paused)
		}
	}
}

func TestProbesAndDocs(t *testing.T) {
	t.Parallel()
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("herald_up 1\n"))
	})
	b := setup(t, Options{Tokens: []string{testToken}, Metrics: metrics})

	tests := []struct {
		name   string
		path   string
		auth   bool
		status int
		check  string // substring of the body
	}{
		{"healthz without token", "/healthz", false, 200, `"ok"`},
		{"readyz without token", "/readyz", false, 200, `"ready"`},
		{"metrics", "/metrics", true, 200, "herald_up 1"},
		{"metrics without token", "/metrics", false, 401, "unauthorized"},
		{"openapi", "/openapi.json", true, 200, `"openapi": "3.1.0"`},
		{"openapi without token", "/openapi.json", false, 401, "unauthorized"},
		{"unknown route", "/v2/nothing", true, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.newRequest(http.MethodGet, tt.path, nil)
			if !tt.auth {
				r.Header.Del("Authorization")
			}
			rec := b.serve(r)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.check) {
				t.Errorf("status %d body %.200s; want %d with %q", rec.Code, rec.Body, tt.status, tt.check)
			}
		})
	}

	t.Run("no metrics handler", func(t *testing.T) {
		t.Parallel()
		nb := setup(t, Options{})
		checkError(t, nb.do(http.MethodGet, "/metrics", ""), http.StatusNotFound, "not_found", "")
	})
	t.Run("method not allowed", func(t *testing.T) {
		t.Parallel()
		rec := b.do(http.MethodDelete, "/v1/jobs", "")
		checkError(t, rec, http.StatusMethodNotAllowed, "method_not_allowed", "")
		if allow := rec.Header().Get("Allow"); allow != "GET, POST, HEAD" {
			t.Errorf("Allow = %q", allow)
		}
	})
	t.Run("draining", func(t *testing.T) {
		t.Parallel()
		var draining atomic.Bool
		db := setup(t, Options{Draining: draining.Load})
		check := func(want int) {
			t.Helper()
			rec := db.do(http.MethodGet, "/readyz", "")
			if rec.Code != want {
				t.Fatalf("readyz = %d %s; want %d", rec.Code, rec.Body, want)
			}
			if want == http.StatusServiceUnavailable {
				checkError(t, rec, want, "draining", "")
				if rec.Header().Get("Retry-After") == "" {
					t.Error("no Retry-After")
				}
			}
			if rec := db.do(http.MethodGet, "/healthz", ""); rec.Code != http.StatusOK {
				t.Errorf("healthz = %d while readyz = %d", rec.Code, want)
			}
		}
		check(http.StatusOK)
		db.server.SetDraining(true)
		check(http.StatusServiceUnavailable)
		db.server.SetDraining(false)
		check(http.StatusOK)
		draining.Store(true)
		check(http.StatusServiceUnavailable)
	})
	t.Run("stopped client", func(t *testing.T) {
		t.Parallel()
		sb := setup(t, Options{})
		if err := sb.client.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		checkError(t, sb.do(http.MethodGet, "/readyz", ""), http.StatusServiceUnavailable, "not_ready", "")
		rec := sb.do(http.MethodPost, "/v1/jobs", `{"kind":"noop","payload":{}}`)
		checkError(t, rec, http.StatusServiceUnavailable, "stopped", "")
		if rec.Header().Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		if rec := sb.do(http.MethodGet, "/healthz", ""); rec.Code != http.StatusOK {
			t.Errorf("healthz = %d", rec.Code)
		}
	})
}

func TestAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{Tokens: []string{"first-token", testToken}})
	tests := []struct {
		name, header string
		want         int
	}{
		{"second token", "Bearer " + testToken, 200},
		{"first token", "Bearer first-token", 200},
		{"scheme case-insensitive", "bearer " + testToken, 200},
		{"missing", "", 401},
		{"wrong token", "Bearer nope", 401},
		{"token prefix", "Bearer " + testToken[:5], 401},
		{"token with suffix", "Bearer " + testToken + "x", 401},
		{"basic scheme", "Basic " + testToken, 401},
		{"bare token", testToken, 401},
		{"empty bearer", "Bearer ", 401},
	}
	for _, tt := range tests {
		for _, path := range []string{"/v1/stats", "/v1/jobs", "/v1/keys/x", "/no/such/route"} {
			t.Run(tt.name+" "+path, func(t *testing.T) {
				t.Parallel()
				r := b.newRequest(http.MethodGet, path, nil)
				r.Header.Del("Authorization")
				if tt.header != "" {
					r.Header.Set("Authorization", tt.header)
				}
				rec := b.serve(r)
				if tt.want == http.StatusUnauthorized {
					checkError(t, rec, http.StatusUnauthorized, "unauthorized", "")
					if got := rec.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
						t.Errorf("WWW-Authenticate = %q", got)
					}
					return
				}
				if path == "/no/such/route" {
					checkError(t, rec, http.StatusNotFound, "not_found", "")
					return
				}
				if rec.Code != tt.want {
					t.Errorf("status %d %s; want %d", rec.Code, rec.Body, tt.want)
				}
			})
		}
	}
}

// unavailableClient is the real client with a store that refuses writes.
type unavailableClient struct{ *herald.Client }

func (unavailableClient) Enqueue(_ context.Context, _ herald.EnqueueParams) (*herald.InsertResult, error) {
	return nil, fmt.Errorf("herald: enqueue: %w", herald.ErrUnavailable)
}

func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	s := New(unavailableClient{b.client}, Options{RetryAfter: 2500 * time.Millisecond})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, b.newRequest(http.MethodPost, "/v1/jobs", []byte(`{"kind":"noop","payload":{}}`)))
	checkError(t, rec, http.StatusServiceUnavailable, "store_unavailable", "")
	if got := rec.Header().Get("Retry-After"); got != "3" {
		t.Errorf("Retry-After = %q; want 3", got)
	}
}

func TestLogging(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{Tokens: []string{testToken}})
	b.enqueue(t, `{"kind":"noop","key":"log","payload":{"secret":"hunter2-payload"}}`)
	r := b.newRequest(http.MethodPost, "/v1/jobs", []byte(`{"kind":"noop","payload":{"secret":"hunter2-payload"},"bogus":1}`))
	b.serve(r)
	b.serve(b.newRequest(http.MethodGet, "/v1/keys/alice@example.com", nil))
	b.serve(b.newRequest(http.MethodGet, "/v1/jobs/999999", nil)) // 404 for a key-free path
	logs := b.logs.String()
	// Refusals are logged at Info; successes only at Debug (TestLogging's
	// logger is Info), so a 201 must not appear.
	if strings.Contains(logs, "status=201") {
		t.Errorf("a success was logged at Info:\n%s", logs)
	}
	for _, want := range []string{"method=POST", `route="POST /v1/jobs"`, "status=400", `route="GET /v1/jobs/{id}"`, "status=404", "duration="} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	// Keys can be personal data: Info logs carry the route, not the path.
	for _, never := range []string{"hunter2", testToken, "Bearer", "bogus", "alice@example.com"} {
		if strings.Contains(logs, never) {
			t.Errorf("logs contain %q:\n%s", never, logs)
		}
	}
}

func mustUnmarshal(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("unmarshal %s: %v", s, err)
	}
}

// GET /v1/jobs/{id} shows what the handler recorded, kept for the retry;
// a job whose handler recorded nothing has no output field.
func TestGetJobShowsOutput(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	flaky := b.enqueue(t, `{"kind":"flaky","key":"out","payload":{}}`)
	b.waitState(t, flaky.ID, herald.StateRetryable)
	noop := b.enqueue(t, `{"kind":"noop","key":"no-out","payload":{}}`)
	b.waitState(t, noop.ID, herald.StateCompleted)
	for _, tc := range []struct {
		id   int64
		want string
	}{{flaky.ID, `{"last_reply":"429"}`}, {noop.ID, ""}} {
		rec := b.do(http.MethodGet, "/v1/jobs/"+strconv.FormatInt(tc.id, 10), "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET job %d: %d %s", tc.id, rec.Code, rec.Body)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
			t.Fatal(err)
		}
		if got := string(raw["output"]); got != tc.want {
			t.Errorf("job %d output = %q; want %q (%s)", tc.id, got, tc.want, rec.Body)
		}
	}
}
