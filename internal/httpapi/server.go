// Package httpapi is herald's HTTP API: JSON routes under /v1 for enqueueing
// and inspecting jobs, health and readiness probes, and the embedded OpenAPI
// document that describes them.
//
// Every error answer has the shape {"error":{"code","message","field"}}.
// The route table (Server.routes) is the single source of truth: the mux
// registers it and a test checks it against openapi.json.
package httpapi

import (
	"cmp"
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/clock"
	"github.com/heraldmq/herald/store"
)

// Client is the part of *herald.Client the API uses.
type Client interface {
	Enqueue(ctx context.Context, p herald.EnqueueParams) (*herald.InsertResult, error)
	EnqueueMany(ctx context.Context, ps []herald.EnqueueParams) ([]herald.InsertResult, error)
	Get(ctx context.Context, id int64) (*herald.Job, error)
	List(ctx context.Context, p herald.ListParams) ([]*herald.Job, error)
	Retry(ctx context.Context, id int64) (*herald.Job, error)
	Cancel(ctx context.Context, id int64) (*herald.Job, error)
	Line(ctx context.Context, key string) (*store.KeyLine, error)
	Stats(ctx context.Context) (*store.Stats, error)
	Metrics() (herald.Metrics, error)
	Pause(kind string) error
	Resume(kind string) error
	Ping(ctx context.Context) error
}

// Topic maps POST /v1/events/{topic} to a job kind.
type Topic struct {
	// Kind is the job kind events of this topic become. Required.
	Kind string
	// KeyField names a top-level field of the event whose value (a string,
	// or a number rendered as its JSON literal) becomes the job's key. Empty
	// means the jobs are unordered.
	KeyField string
}

// Options configures a Server. Zero fields take the documented defaults.
type Options struct {
	// Logger receives one record per request (method, route pattern,
	// status, duration): Debug for successes, Info for refusals, Warn for
	// server errors; the raw path only at Debug. Bodies, payloads and the
	// Authorization header are never logged. Defaults to discarding.
	Logger *slog.Logger
	// Tokens, when non-empty, are the accepted bearer tokens: every route
	// except /healthz and /readyz requires "Authorization: Bearer <token>".
	// Defaults to none (no authentication).
	Tokens []string
	// MaxRequestBytes caps a request body. Defaults to 32 MiB, enough for a
	// full batch of small jobs; a job's payload is capped separately by
	// herald.Config.MaxPayloadBytes.
	MaxRequestBytes int64
	// MaxBatchJobs caps the jobs in one POST /v1/jobs/batch. Defaults to 10,000.
	MaxBatchJobs int
	// Topics maps event topics to kinds for POST /v1/events/{topic}.
	// Defaults to none: every topic is unknown.
	Topics map[string]Topic
	// Draining, if set, reports that the process is shutting down; it is
	// combined (OR) with Server.SetDraining. While draining, POST routes
	// answer 503 with Retry-After and /readyz answers 503. Reads still work.
	Draining func() bool
	// MaxBacklog is the pending-job count above which enqueue routes answer
	// 429 with Retry-After. Defaults to 0: no limit.
	MaxBacklog int64
	// Backlog reports the current pending-job count for MaxBacklog.
	// Defaults to the non-finalized jobs in the client's periodic store
	// snapshot (Client.Metrics().Store), which costs no query.
	Backlog func() int64
	// RetryAfter is the Retry-After sent with 429 and 503 answers, rounded
	// up to whole seconds. Defaults to 1s.
	RetryAfter time.Duration
	// Metrics, if set, is mounted at GET /metrics (behind the tokens).
	Metrics http.Handler
	// Clock is the time source for ages in /v1/stats. Defaults to the wall clock.
	Clock clock.Clock
	// Prepare maps a kind to a check that runs on each of its jobs before
	// it is enqueued, on every enqueue route: it may complete the job (an
	// email kind sets the default key) and refuses a bad payload with a
	// *herald.FieldError, answered 422 naming the field. Defaults to none.
	Prepare map[string]func(p *herald.EnqueueParams) error
	// MailingsKind is the email kind POST /v1/mailings enqueues (seed
	// 001's format). Defaults to "": the mailings routes answer 404.
	MailingsKind string
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.MaxRequestBytes = cmp.Or(o.MaxRequestBytes, 32<<20)
	o.MaxBatchJobs = cmp.Or(o.MaxBatchJobs, 10_000)
	o.RetryAfter = cmp.Or(o.RetryAfter, time.Second)
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	return o
}

// Server serves the HTTP API for one client.
type Server struct {
	client   Client
	opts     Options
	tokens   [][]byte
	draining atomic.Bool
	mux      *http.ServeMux
	handler  http.Handler
}

// New returns a server for client. It does not listen: mount Handler.
func New(client Client, opts Options) *Server {
	s := &Server{client: client, opts: opts.withDefaults()}
	for _, t := range s.opts.Tokens {
		if t != "" {
			s.tokens = append(s.tokens, []byte(t))
		}
	}
	s.mux = http.NewServeMux()
	for _, rt := range s.routes() {
		s.mux.Handle(rt.method+" "+rt.path, s.guard(rt))
	}
	s.mux.Handle("/", s.notFound(s.mux))
	s.handler = s.logRequests(s.mux)
	return s
}

// Handler returns the API's root handler.
func (s *Server) Handler() http.Handler { return s.handler }

// SetDraining marks the server as shutting down (or not): write routes and
// /readyz answer 503 while it is set.
func (s *Server) SetDraining(draining bool) { s.draining.Store(draining) }

func (s *Server) isDraining() bool {
	return s.draining.Load() || (s.opts.Draining != nil && s.opts.Draining())
}

// route is one entry of the route table.
type route struct {
	method  string
	path    string // ServeMux path pattern; OpenAPI uses the same syntax
	handler http.HandlerFunc
	public  bool // served without a token
	write   bool // refused while draining
	enqueue bool // takes a JSON body (415 otherwise) and is refused over the backlog limit
}

// routes is the route table: the mux registers it, and the OpenAPI sync
// test compares it with openapi.json.
func (s *Server) routes() []route {
	rs := []route{
		{method: http.MethodPost, path: "/v1/jobs", handler: s.handleEnqueue, write: true, enqueue: true},
		{method: http.MethodPost, path: "/v1/jobs/batch", handler: s.handleBatch, write: true, enqueue: true},
		{method: http.MethodGet, path: "/v1/jobs", handler: s.handleList},
		{method: http.MethodGet, path: "/v1/jobs/{id}", handler: s.handleGet},
		{method: http.MethodPost, path: "/v1/jobs/{id}/retry", handler: s.handleRetry, write: true},
		{method: http.MethodPost, path: "/v1/jobs/{id}/cancel", handler: s.handleCancel, write: true},
		{method: http.MethodPost, path: "/v1/events/{topic}", handler: s.handleEvent, write: true, enqueue: true},
		{method: http.MethodGet, path: "/v1/keys/{key}", handler: s.handleKey},
		{method: http.MethodGet, path: "/v1/stats", handler: s.handleStats},
		{method: http.MethodPost, path: "/v1/mailings", handler: s.handleMailings, write: true, enqueue: true},
		{method: http.MethodGet, path: "/v1/mailings/{id}", handler: s.handleMailing},
		{method: http.MethodPost, path: "/v1/kinds/{kind}/pause", handler: s.handlePause, write: true},
		{method: http.MethodPost, path: "/v1/kinds/{kind}/resume", handler: s.handleResume, write: true},
		{method: http.MethodGet, path: "/healthz", handler: s.handleHealthz, public: true},
		{method: http.MethodGet, path: "/readyz", handler: s.handleReadyz, public: true},
		{method: http.MethodGet, path: "/openapi.json", handler: s.handleOpenAPI},
	}
	if s.opts.Metrics != nil {
		rs = append(rs, route{method: http.MethodGet, path: "/metrics", handler: s.opts.Metrics.ServeHTTP})
	}
	return rs
}

// guard applies the checks every request of rt passes before its handler,
// cheapest and least revealing first.
func (s *Server) guard(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !rt.public && !s.authorized(r) {
			s.unauthorized(w)
			return
		}
		if rt.write && s.isDraining() {
			s.unavailable(w, "draining", "the server is shutting down; retry on another node or later")
			return
		}
		if rt.enqueue {
			if msg, ok := jsonContentType(r.Header.Get("Content-Type")); !ok {
				writeError(w, http.StatusUnsupportedMediaType, apiError{Code: "unsupported_media_type", Message: msg})
				return
			}
			if s.overBacklog() {
				s.setRetryAfter(w)
				writeError(w, http.StatusTooManyRequests, apiError{
					Code: "backlog_full", Message: "the backlog is over its limit; retry later",
				})
				return
			}
			// A declared length over the limit is refused before a byte of
			// the body is read: the client learns at once, and the server
			// does not wait out a body it will not take.
			if r.ContentLength > s.opts.MaxRequestBytes {
				writeError(w, http.StatusRequestEntityTooLarge, apiError{
					Code: "request_too_large", Message: fmt.Sprintf("the request body exceeds %d bytes", s.opts.MaxRequestBytes),
				})
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxRequestBytes)
		}
		rt.handler(w, r)
	})
}

// notFound answers requests no route matches: 404, or 405 with Allow when
// the path exists under another method. Without a token it answers 401, so
// that unauthenticated callers cannot probe which routes exist.
func (s *Server) notFound(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			s.unauthorized(w)
			return
		}
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			if slices.Contains(allow, http.MethodGet) {
				allow = append(allow, http.MethodHead)
			}
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, apiError{
				Code: "method_not_allowed", Message: r.Method + " is not allowed here; allowed: " + strings.Join(allow, ", "),
			})
			return
		}
		writeError(w, http.StatusNotFound, apiError{Code: "not_found", Message: "no such route"})
	})
}

// authorized reports whether r carries one of the tokens (or none are set).
// Every token is compared, in constant time, so the answer's timing does not
// tell which or how much of a token matched.
func (s *Server) authorized(r *http.Request) bool {
	if len(s.tokens) == 0 {
		return true
	}
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := []byte(strings.TrimSpace(token))
	match := 0
	for _, want := range s.tokens {
		match |= subtle.ConstantTimeCompare(got, want)
	}
	return match == 1
}

func (s *Server) unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
	writeError(w, http.StatusUnauthorized, apiError{Code: "unauthorized", Message: "a valid bearer token is required"})
}

func (s *Server) setRetryAfter(w http.ResponseWriter) {
	secs := int64((s.opts.RetryAfter + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
}

func (s *Server) unavailable(w http.ResponseWriter, code, msg string) {
	s.setRetryAfter(w)
	writeError(w, http.StatusServiceUnavailable, apiError{Code: code, Message: msg})
}

func (s *Server) overBacklog() bool {
	if s.opts.MaxBacklog <= 0 {
		return false
	}
	return s.backlog() > s.opts.MaxBacklog
}

func (s *Server) backlog() int64 {
	if s.opts.Backlog != nil {
		return s.opts.Backlog()
	}
	m, err := s.client.Metrics()
	if err != nil || m.Store == nil {
		return 0 // no snapshot yet: do not refuse work on a guess
	}
	var n int64
	for _, byState := range m.Store.ByKindState {
		for state, c := range byState {
			if !state.Finalized() {
				n += c
			}
		}
	}
	return n
}

// logRequests logs one record per request at a level set by its outcome.
// It never logs the query, body or headers.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		// Info logs the route pattern, not the path: paths carry job keys,
		// which are often personal data (an email address, an account).
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		// Successes are Debug: at thousands of requests a second an access
		// line each costs real throughput, and /metrics counts them anyway.
		// Refusals are Info and server errors Warn, so they stand out.
		level := slog.LevelDebug
		switch {
		case r.Context().Err() != nil:
			// The client went away (e.g. a load generator stopping): its
			// answer was never read, so it is no server error.
		case rec.status >= 500:
			level = slog.LevelWarn
		case rec.status >= 400:
			level = slog.LevelInfo
		}
		// Checked first: at the default levels most records are dropped,
		// and building them costs more than the check.
		ctx := r.Context()
		if s.opts.Logger.Enabled(ctx, level) {
			s.opts.Logger.LogAttrs(ctx, level, "http request",
				slog.String("method", r.Method),
				slog.String("route", route),
				slog.Int("status", rec.status),
				slog.Duration("duration", time.Since(start)),
			)
		}
		if s.opts.Logger.Enabled(ctx, slog.LevelDebug) {
			s.opts.Logger.LogAttrs(ctx, slog.LevelDebug, "http request path", slog.String("path", r.URL.Path))
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
