package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldmq/herald"
)

// stubClient stores nothing and answers every enqueue at once, so the
// benchmarks below measure the HTTP layer alone: routing, checks, decoding,
// rendering and logging, without the store's commit.
type stubClient struct {
	Client // nil: the benchmarks call nothing else
	nextID atomic.Int64
}

func (c *stubClient) job(p herald.EnqueueParams) *herald.Job {
	payload, _ := p.Payload.(json.RawMessage)
	now := time.Date(2030, 1, 2, 15, 4, 5, 123456789, time.UTC)
	return &herald.Job{
		ID: c.nextID.Add(1), Kind: p.Kind, Key: p.Key, Payload: payload,
		State: herald.StateAvailable, MaxAttempts: 25, RunAt: now, CreatedAt: now,
	}
}

func (c *stubClient) Enqueue(_ context.Context, p herald.EnqueueParams) (*herald.InsertResult, error) {
	return &herald.InsertResult{Job: c.job(p)}, nil
}

func (c *stubClient) EnqueueMany(_ context.Context, ps []herald.EnqueueParams) ([]herald.InsertResult, error) {
	out := make([]herald.InsertResult, len(ps))
	for i, p := range ps {
		out[i].Job = c.job(p)
	}
	return out, nil
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }

// benchmarkPost serves POST path with body b.N times through the API's
// root handler, as bench http's and wrk's requests are.
func benchmarkPost(b *testing.B, path string, body []byte, jobs int) {
	b.Helper()
	s := New(&stubClient{}, Options{})
	h := s.Handler()
	u := &url.URL{Path: path}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		r := &http.Request{
			Method: http.MethodPost, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:        http.Header{"Content-Type": {"application/json"}},
			Body:          io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)), Host: "127.0.0.1", RequestURI: path,
		}
		w := &discardWriter{h: http.Header{}}
		h.ServeHTTP(w, r.WithContext(context.Background()))
		if w.status != http.StatusCreated {
			b.Fatalf("status %d", w.status)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*jobs), "ns/job")
}

func BenchmarkHandlerEnqueue(b *testing.B) {
	benchmarkPost(b, "/v1/jobs", []byte(`{"kind":"noop","key":"k17","payload":{"n":17}}`), 1)
}

func BenchmarkHandlerBatch1000(b *testing.B) {
	var buf bytes.Buffer
	buf.WriteString(`{"jobs":[`)
	for i := range 1000 {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"kind":"noop","key":"k` + strconv.Itoa(i%1000) + `","payload":{"n":` + strconv.Itoa(i) + `}}`)
	}
	buf.WriteString(`]}`)
	benchmarkPost(b, "/v1/jobs/batch", buf.Bytes(), 1000)
}
