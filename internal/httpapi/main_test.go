package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldmq/herald"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var _ Client = (*herald.Client)(nil)

const testToken = "test-token-0123456789"

// testBundle is one server over a real client on its own SQLite database.
type testBundle struct {
	client  *herald.Client
	server  *Server
	logs    *syncBuffer
	token   string // sent by newRequest unless the request sets Authorization
	release chan struct{}
}

// setup starts a client with these kinds and serves it with opts:
//   - noop completes at once;
//   - idle completes at once (tests pause it to keep jobs waiting);
//   - block runs until the test ends;
//   - flaky records {"last_reply":"429"}, fails and asks for a retry an
//     hour later;
//   - fatal fails permanently and blocks its key.
func setup(tb testing.TB, opts Options) *testBundle {
	tb.Helper()
	client, err := herald.New(herald.Config{DataDir: tb.TempDir(), PollInterval: 10 * time.Millisecond})
	if err != nil {
		tb.Fatalf("herald.New: %v", err)
	}
	b := &testBundle{client: client, logs: &syncBuffer{}, release: make(chan struct{})}
	noop := herald.HandlerFunc(func(context.Context, *herald.Job) error { return nil })
	kinds := []struct {
		name string
		h    herald.HandlerFunc
		kc   herald.KindConfig
	}{
		{"noop", noop, herald.KindConfig{}},
		{"idle", noop, herald.KindConfig{}},
		{"block", func(ctx context.Context, _ *herald.Job) error {
			select {
			case <-b.release:
			case <-ctx.Done():
			}
			return nil
		}, herald.KindConfig{}},
		{"flaky", func(ctx context.Context, _ *herald.Job) error {
			if err := herald.RecordOutput(ctx, map[string]string{"last_reply": "429"}); err != nil {
				return err
			}
			return herald.RetryAfter(time.Hour, errors.New("remote answered 429"))
		}, herald.KindConfig{}},
		{"fatal", func(context.Context, *herald.Job) error {
			return herald.Permanent(errors.New("bad address"))
		}, herald.KindConfig{OnDiscard: herald.DiscardBlock}},
	}
	for _, k := range kinds {
		if err := client.Register(k.name, k.h, k.kc); err != nil {
			tb.Fatalf("Register(%q): %v", k.name, err)
		}
	}
	if err := client.Start(context.Background()); err != nil {
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.Stop(ctx); err != nil {
			tb.Errorf("Stop: %v", err)
		}
	})
	tb.Cleanup(func() { close(b.release) }) // runs before Stop: cleanups are LIFO
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(b.logs, nil))
	}
	if len(opts.Tokens) > 0 {
		b.token = opts.Tokens[0]
	}
	b.server = New(client, opts)
	return b
}

// newRequest builds a request with a JSON content type (when there is a
// body) and the bundle's token.
func (b *testBundle) newRequest(method, path string, body []byte) *http.Request {
	var r *http.Request
	if body == nil {
		r = httptest.NewRequestWithContext(context.Background(), method, path, nil)
	} else {
		r = httptest.NewRequestWithContext(context.Background(), method, path, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	if b.token != "" {
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return r
}

func (b *testBundle) serve(r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	b.server.Handler().ServeHTTP(rec, r)
	return rec
}

func (b *testBundle) do(method, path, body string) *httptest.ResponseRecorder {
	var raw []byte
	if body != "" {
		raw = []byte(body)
	}
	return b.serve(b.newRequest(method, path, raw))
}

// enqueue posts a job and returns it, failing unless the answer is 201.
func (b *testBundle) enqueue(t *testing.T, body string) jobJSONTest {
	t.Helper()
	rec := b.do(http.MethodPost, "/v1/jobs", body)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /v1/jobs %s = %d %s", body, rec.Code, rec.Body)
	}
	return decode[jobJSONTest](t, rec)
}

// waitState polls until job id is in state.
func (b *testBundle) waitState(t *testing.T, id int64, state herald.JobState) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := b.client.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("Get(%d): %v", id, err)
		}
		if j.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %d is %s; want %s", id, j.State, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// storedJobs lists every job in the store.
func (b *testBundle) storedJobs(t *testing.T) []*herald.Job {
	t.Helper()
	jobs, err := b.client.List(t.Context(), herald.ListParams{Limit: 1000})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return jobs
}

// jobJSONTest is the job shape as a client decodes it.
type jobJSONTest struct {
	ID          int64           `json:"id"`
	Kind        string          `json:"kind"`
	Key         string          `json:"key"`
	State       string          `json:"state"`
	Attempt     int             `json:"attempt"`
	MaxAttempts int             `json:"max_attempts"`
	Payload     json.RawMessage `json:"payload"`
	RunAt       *time.Time      `json:"run_at"`
	CreatedAt   *time.Time      `json:"created_at"`
	StartedAt   *time.Time      `json:"started_at"`
	FinishedAt  *time.Time      `json:"finished_at"`
	Errors      []struct {
		At      time.Time `json:"at"`
		Attempt int       `json:"attempt"`
		Message string    `json:"message"`
	} `json:"errors"`
	Output json.RawMessage `json:"output"`
}

func (j jobJSONTest) path() string { return "/v1/jobs/" + strconv.FormatInt(j.ID, 10) }

// decode decodes a JSON answer strictly.
func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q; want application/json (body %s)", ct, rec.Body)
	}
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, rec.Body, err)
	}
	return v
}

// checkError asserts an error answer: status, the documented shape, code
// and field ("" means the field must be absent).
func checkError(t *testing.T, rec *httptest.ResponseRecorder, status int, code, field string) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status = %d; want %d (body %s)", rec.Code, status, rec.Body)
	}
	var body struct {
		Error *struct {
			Code    string  `json:"code"`
			Message string  `json:"message"`
			Field   *string `json:"field"`
		} `json:"error"`
	}
	got := decode[struct {
		Error json.RawMessage `json:"error"`
	}](t, rec)
	dec := json.NewDecoder(bytes.NewReader(got.Error))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body.Error); err != nil || body.Error == nil {
		t.Fatalf("error object %s: %v", got.Error, err)
	}
	e := body.Error
	if e.Message == "" {
		t.Errorf("error message is empty (body %s)", rec.Body)
	}
	if code != "" && e.Code != code {
		t.Errorf("error code = %q; want %q (body %s)", e.Code, code, rec.Body)
	}
	switch {
	case field == "" && e.Field != nil:
		t.Errorf("error field = %q; want none (body %s)", *e.Field, rec.Body)
	case field != "" && (e.Field == nil || *e.Field != field):
		t.Errorf("error field wrong; want %q (body %s)", field, rec.Body)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// compact returns s as compact JSON, for comparing payloads.
func compact(t *testing.T, s []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, s); err != nil {
		t.Fatalf("compact %q: %v", s, err)
	}
	return buf.String()
}
