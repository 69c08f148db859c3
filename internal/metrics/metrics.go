// Package metrics exports herald's engine counters, store gauges, attempt
// durations and HTTP requests to Prometheus.
package metrics

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/store"
)

// Source is what the exporter reads on each scrape; *herald.Client is one.
type Source interface {
	Metrics() (herald.Metrics, error)
}

// Exporter is a Prometheus registry holding herald's metrics. Create it
// before the client (its ObserveAttempt goes into herald.Config.OnAttempt),
// then Attach the client.
type Exporter struct {
	reg      *prometheus.Registry
	source   atomic.Pointer[Source]
	duration *prometheus.HistogramVec
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New returns an exporter with Go runtime and process metrics registered.
func New() *Exporter {
	e := &Exporter{reg: prometheus.NewRegistry()}
	e.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_job_attempt_duration_seconds",
		Help:    "Duration of job attempts by kind and outcome.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1ms .. ~4.4min
	}, []string{"kind", "outcome"})
	e.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_http_requests_total",
		Help: "HTTP requests by method, route pattern and status code.",
	}, []string{"method", "route", "code"})
	e.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_http_request_duration_seconds",
		Help:    "HTTP request durations by route pattern.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	e.reg.MustRegister(e.duration, e.requests, e.latency, (*engineCollector)(e),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return e
}

// Attach sets the client whose counters and gauges are exported.
func (e *Exporter) Attach(s Source) { e.source.Store(&s) }

// Registry exposes the registry, e.g. to add metrics of an embedding app.
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// Handler serves the metrics in the Prometheus text format.
func (e *Exporter) Handler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{Registry: e.reg})
}

// ObserveAttempt records one attempt; use it as herald.Config.OnAttempt.
func (e *Exporter) ObserveAttempt(kind string, outcome store.Outcome, d time.Duration) {
	e.duration.WithLabelValues(kind, outcomeName(outcome)).Observe(d.Seconds())
}

func outcomeName(o store.Outcome) string {
	switch o {
	case store.OutcomeCompleted:
		return "completed"
	case store.OutcomeRetry:
		return "retry"
	case store.OutcomeDiscard:
		return "discarded"
	case store.OutcomeRelease:
		return "released"
	}
	return "unknown"
}

// Middleware counts requests by the route pattern that served them (never
// the raw path: ids in paths would make unbounded label values).
func (e *Exporter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		e.requests.WithLabelValues(r.Method, route, strconv.Itoa(rec.code)).Inc()
		e.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

var (
	descEnqueued  = prometheus.NewDesc("herald_jobs_enqueued_total", "Jobs stored, by kind.", []string{"kind"}, nil)
	descStarted   = prometheus.NewDesc("herald_jobs_started_total", "Attempts started, by kind.", []string{"kind"}, nil)
	descCompleted = prometheus.NewDesc("herald_jobs_completed_total", "Jobs completed, by kind.", []string{"kind"}, nil)
	descFailed    = prometheus.NewDesc("herald_jobs_failed_total", "Failed attempts (retried or discarded), by kind.", []string{"kind"}, nil)
	descDiscarded = prometheus.NewDesc("herald_jobs_discarded_total", "Jobs dead-lettered, by kind.", []string{"kind"}, nil)
	descPaused    = prometheus.NewDesc("herald_kind_paused", "1 when the kind is paused on this node.", []string{"kind"}, nil)
	descRunning   = prometheus.NewDesc("herald_jobs_running", "Attempts running now on this node.", nil, nil)
	descBacklog   = prometheus.NewDesc("herald_jobs", "Jobs in the store by kind and state (periodic snapshot).", []string{"kind", "state"}, nil)
	descReady     = prometheus.NewDesc("herald_ready_keys", "Line heads that could start now (periodic snapshot).", nil, nil)
	descOldest    = prometheus.NewDesc("herald_oldest_pending_age_seconds", "Age of the oldest waiting job (periodic snapshot).", nil, nil)
	descReleased  = prometheus.NewDesc("herald_jobs_released_total", "Attempts interrupted by shutdown and returned to their line.", nil, nil)
	descFenced    = prometheus.NewDesc("herald_outcomes_fenced_total", "Outcomes dropped because the lease had been lost.", nil, nil)
)

// engineCollector reads the attached client at scrape time.
type engineCollector Exporter

func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEnqueued, descStarted, descCompleted, descFailed, descDiscarded,
		descPaused, descRunning, descBacklog, descReady, descOldest, descReleased, descFenced} {
		ch <- d
	}
}

func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.source.Load()
	if src == nil {
		return
	}
	m, err := (*src).Metrics()
	if err != nil {
		return // not started or stopped: nothing to report
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for kind, k := range m.ByKind {
		counter(descEnqueued, k.Enqueued, kind)
		counter(descStarted, k.Started, kind)
		counter(descCompleted, k.Completed, kind)
		counter(descFailed, k.Failed, kind)
		counter(descDiscarded, k.Discarded, kind)
		paused := 0.0
		if k.Paused {
			paused = 1
		}
		gauge(descPaused, paused, kind)
	}
	gauge(descRunning, float64(m.Running))
	counter(descReleased, m.Released)
	counter(descFenced, m.Fenced)
	if st := m.Store; st != nil {
		for kind, states := range st.ByKindState {
			for state, n := range states {
				gauge(descBacklog, float64(n), kind, string(state))
			}
		}
		gauge(descReady, float64(st.ReadyKeys))
		age := 0.0
		if !st.OldestPendingDueAt.IsZero() {
			age = max(time.Since(st.OldestPendingDueAt).Seconds(), 0)
		}
		gauge(descOldest, age)
	}
}
