package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldmq/herald"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestExporter(t *testing.T) {
	t.Parallel()
	exp := New()
	c, err := herald.New(herald.Config{DataDir: t.TempDir(), OnAttempt: exp.ObserveAttempt, StatsInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 1)
	if err := c.Register("mail", herald.HandlerFunc(func(context.Context, *herald.Job) error {
		done <- struct{}{}
		return nil
	}), herald.KindConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	exp.Attach(c)
	if _, err := c.Enqueue(t.Context(), herald.EnqueueParams{Kind: "mail", Key: "a"}); err != nil {
		t.Fatal(err)
	}
	<-done

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", exp.Handler())
	mux.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	srv := httptest.NewServer(exp.Middleware(mux))
	t.Cleanup(srv.Close)
	get := func(path string) string {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close() //nolint:errcheck // read fully below
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	get("/v1/jobs/17")
	deadline := time.Now().Add(10 * time.Second)
	var body string
	for {
		body = get("/metrics")
		if strings.Contains(body, `herald_jobs_completed_total{kind="mail"} 1`) &&
			strings.Contains(body, `herald_jobs{kind="mail",state="completed"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed the completed job:\n%s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{
		`herald_jobs_enqueued_total{kind="mail"} 1`,
		`herald_jobs_started_total{kind="mail"} 1`,
		`herald_jobs_running 0`,
		`herald_job_attempt_duration_seconds_count{kind="mail",outcome="completed"} 1`,
		`herald_http_requests_total{code="418",method="GET",route="GET /v1/jobs/{id}"} 1`,
		`herald_kind_paused{kind="mail"} 0`,
		"herald_ready_keys 0",
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "/v1/jobs/17") {
		t.Error("a raw path leaked into a label")
	}
}

func TestExporterWithoutClient(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	New().Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), "herald_jobs_running") {
		t.Errorf("scrape before Attach: %d\n%s", rec.Code, rec.Body.String())
	}
}
