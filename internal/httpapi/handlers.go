package httpapi

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/heraldmq/herald"
)

//go:embed openapi.json
var openAPIDocument []byte

const (
	defaultListLimit = 100
	maxListLimit     = 1000
	readyzTimeout    = 2 * time.Second
)

// enqueueRequest is the body of POST /v1/jobs and one element of a batch.
type enqueueRequest struct {
	Kind    string          `json:"kind"`
	Key     string          `json:"key"`
	Payload json.RawMessage `json:"payload"`
	// RunAt is an RFC 3339 time; Delay a Go duration string ("30s", "1h30m").
	RunAt          *string `json:"run_at"`
	Delay          *string `json:"delay"`
	MaxAttempts    int     `json:"max_attempts"`
	IdempotencyKey string  `json:"idempotency_key"`
}

// params checks what the client does not (NUL bytes, time formats) and
// converts r. Field names get prefix.
func (r *enqueueRequest) params(prefix string) (herald.EnqueueParams, *statusError) {
	p := herald.EnqueueParams{
		Kind: r.Kind, Key: r.Key, Payload: r.Payload,
		MaxAttempts: r.MaxAttempts, IdempotencyKey: r.IdempotencyKey,
	}
	for _, f := range []struct{ name, value string }{
		{"kind", r.Kind}, {"key", r.Key}, {"idempotency_key", r.IdempotencyKey},
	} {
		if strings.IndexByte(f.value, 0) >= 0 {
			return p, badRequest("invalid_field", prefix+f.name, "must not contain NUL bytes")
		}
	}
	if r.Payload == nil {
		return p, badRequest("invalid_field", prefix+"payload", "is required (send null for none)")
	}
	if r.RunAt != nil && r.Delay != nil {
		return p, badRequest("invalid_field", prefix+"delay", "run_at and delay are mutually exclusive; send one")
	}
	if r.RunAt != nil {
		t, err := time.Parse(time.RFC3339Nano, *r.RunAt)
		if err != nil {
			return p, badRequest("invalid_field", prefix+"run_at", "must be an RFC 3339 time such as 2030-01-02T15:04:05Z")
		}
		p.RunAt = t
	}
	if r.Delay != nil {
		d, err := time.ParseDuration(*r.Delay)
		if err != nil || d < 0 {
			return p, badRequest("invalid_field", prefix+"delay", `must be a non-negative duration such as "30s" or "1h30m"`)
		}
		p.Delay = d
	}
	return p, nil
}

func (s *Server) handleEnqueue(w http.ResponseWriter, r *http.Request) {
	body, serr := readBody(r)
	if serr != nil {
		writeStatusError(w, serr)
		return
	}
	req, ok := decodeEnqueueFast(body)
	if !ok {
		// Outside the fast path's subset: encoding/json decides, and names
		// the problem if there is one.
		if serr := decodeObject(body, &req, ""); serr != nil {
			writeStatusError(w, serr)
			return
		}
	}
	p, serr := req.params("")
	if serr == nil {
		serr = s.prepare(&p, "")
	}
	if serr != nil {
		writeStatusError(w, serr)
		return
	}
	res, err := s.client.Enqueue(r.Context(), p)
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	status := http.StatusCreated
	if res.Existing {
		status = http.StatusOK
	}
	w.Header()["Location"] = []string{"/v1/jobs/" + strconv.FormatInt(res.Job.ID, 10)}
	writeJob(w, status, res.Job)
}

// writeJob answers with j, written by the fast writer when it can.
func writeJob(w http.ResponseWriter, status int, j *herald.Job) {
	// A new job's fixed part (numbers, state, two timestamps) is under 256 bytes.
	buf := make([]byte, 0, 256+len(j.Kind)+len(j.Key)+len(j.Payload)+len(j.Output))
	if b, ok := appendJobJSON(buf, j); ok {
		writeJSONBytes(w, status, append(b, '\n'))
		return
	}
	writeJSON(w, status, renderJob(j))
}

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) {
	body, serr := readBody(r)
	if serr != nil {
		writeStatusError(w, serr)
		return
	}
	jobs, ok := decodeBatchFast(body)
	n := len(jobs)
	var raws []json.RawMessage
	if !ok {
		// Outside the fast path's subset: encoding/json decides.
		var req struct {
			Jobs []json.RawMessage `json:"jobs"`
		}
		// Each job's UTF-8 is checked on its own, to name jobs[i].field.
		if serr := decodeStrict(body, &req, ""); serr != nil {
			writeStatusError(w, serr)
			return
		}
		raws, n = req.Jobs, len(req.Jobs)
	}
	switch {
	case n == 0:
		writeStatusError(w, badRequest("invalid_field", "jobs", "must hold at least one job"))
		return
	case n > s.opts.MaxBatchJobs:
		writeError(w, http.StatusRequestEntityTooLarge, apiError{
			Code: "batch_too_large", Field: "jobs",
			Message: fmt.Sprintf("holds %d jobs; the limit is %d per request", n, s.opts.MaxBatchJobs),
		})
		return
	}
	ps := make([]herald.EnqueueParams, n)
	for i := range n {
		var jr enqueueRequest
		if raws != nil {
			if serr := decodeObject(raws[i], &jr, jobPrefix(i)); serr != nil {
				writeStatusError(w, serr)
				return
			}
		} else {
			jr = jobs[i]
		}
		p, serr := jr.params("")
		if serr == nil {
			serr = s.prepare(&p, "")
		}
		if serr != nil {
			// Fields are named in the batch: jobs[i].field.
			serr.Field = jobPrefix(i) + serr.Field
			writeStatusError(w, serr)
			return
		}
		ps[i] = p
	}
	res, err := s.client.EnqueueMany(r.Context(), ps)
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	b := make([]byte, 0, 16+len(res)*8)
	b = append(b, `{"ids":[`...)
	for i, ir := range res {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, ir.Job.ID, 10)
	}
	writeJSONBytes(w, http.StatusCreated, append(b, "]}\n"...))
}

// jobPrefix is the prefix of the fields of a batch's job i in errors.
func jobPrefix(i int) string { return "jobs[" + strconv.Itoa(i) + "]." }

func (s *Server) handleEvent(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("topic")
	topic, ok := s.opts.Topics[name]
	if !ok {
		writeError(w, http.StatusNotFound, apiError{Code: "unknown_topic", Message: fmt.Sprintf("no topic %q is configured", name)})
		return
	}
	body, serr := readBody(r)
	if serr != nil {
		writeStatusError(w, serr)
		return
	}
	if !utf8.Valid(body) {
		writeStatusError(w, badRequest("invalid_utf8", "", "the event contains invalid UTF-8"))
		return
	}
	var event map[string]json.RawMessage
	if err := json.Unmarshal(body, &event); err != nil {
		serr := decodeError(err, "")
		if serr.Code == "invalid_type" {
			serr.Message = "the event must be a JSON object"
		}
		writeStatusError(w, serr)
		return
	}
	if event == nil {
		writeStatusError(w, badRequest("invalid_type", "", "the event must be a JSON object, not null"))
		return
	}
	var key string
	if topic.KeyField != "" {
		raw, ok := event[topic.KeyField]
		if !ok {
			writeError(w, http.StatusUnprocessableEntity, apiError{
				Code: "missing_key_field", Field: topic.KeyField,
				Message: fmt.Sprintf("topic %q takes its key from field %q, which the event lacks", name, topic.KeyField),
			})
			return
		}
		var err error
		if key, err = keyFromJSON(raw); err != nil {
			writeError(w, http.StatusUnprocessableEntity, apiError{Code: "invalid_key_field", Field: topic.KeyField, Message: err.Error()})
			return
		}
		if strings.IndexByte(key, 0) >= 0 {
			writeStatusError(w, badRequest("invalid_field", topic.KeyField, "must not contain NUL bytes"))
			return
		}
	}
	idem := r.Header.Get("Idempotency-Key")
	p := herald.EnqueueParams{Kind: topic.Kind, Key: key, Payload: json.RawMessage(body), IdempotencyKey: idem}
	if serr := s.prepare(&p, ""); serr != nil {
		// The event is the payload: name the event's own field.
		serr.Field = strings.TrimPrefix(strings.TrimPrefix(serr.Field, "payload"), ".")
		writeStatusError(w, serr)
		return
	}
	res, err := s.client.Enqueue(r.Context(), p)
	if err != nil {
		// The client names the job's fields; the caller knows the event's.
		if fe, ok := errors.AsType[*herald.FieldError](err); ok {
			switch fe.Field {
			case "key":
				fe.Field = topic.KeyField
			case "idempotency_key":
				fe.Field = "Idempotency-Key"
			}
		}
		s.writeClientError(w, r, err)
		return
	}
	status := http.StatusCreated
	if res.Existing {
		status = http.StatusOK
	}
	w.Header().Set("Location", "/v1/jobs/"+strconv.FormatInt(res.Job.ID, 10))
	writeJSON(w, status, struct {
		ID  int64    `json:"id"`
		Job *jobJSON `json:"job"`
	}{res.Job.ID, renderJob(res.Job)})
}

// keyFromJSON turns a key field's value into a key: strings as they are,
// numbers as their JSON literal.
func keyFromJSON(raw json.RawMessage) (string, error) {
	raw = json.RawMessage(strings.TrimSpace(string(raw)))
	if len(raw) == 0 {
		return "", errors.New("must be a string or a number")
	}
	switch c := raw[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errors.New("must be a string or a number")
		}
		return s, nil
	case c == '-' || (c >= '0' && c <= '9'):
		return string(raw), nil
	default:
		return "", errors.New("must be a string or a number")
	}
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := herald.ListParams{Kind: q.Get("kind"), Key: q.Get("key")}
	if st := q.Get("state"); st != "" {
		if !herald.JobState(st).Valid() {
			writeStatusError(w, badRequest("invalid_field", "state",
				"unknown state %q; one of scheduled, available, running, retryable, completed, discarded, cancelled", st))
			return
		}
		p.State = herald.JobState(st)
	}
	limit := defaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			writeStatusError(w, badRequest("invalid_field", "limit", "must be an integer from 1 to %d", maxListLimit))
			return
		}
		limit = n
	}
	if v := q.Get("cursor"); v != "" {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil || id < 0 {
			writeStatusError(w, badRequest("invalid_field", "cursor", "must be a next_cursor value from an earlier page"))
			return
		}
		p.AfterID = id
	}
	p.Limit = limit + 1 // one more tells whether another page exists
	jobs, err := s.client.List(r.Context(), p)
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	var next *string
	if len(jobs) > limit {
		jobs = jobs[:limit]
		c := strconv.FormatInt(jobs[limit-1].ID, 10)
		next = &c
	}
	out := make([]*jobJSON, len(jobs))
	for i, j := range jobs {
		out[i] = renderJob(j)
	}
	writeJSON(w, http.StatusOK, struct {
		Jobs       []*jobJSON `json:"jobs"`
		NextCursor *string    `json:"next_cursor"`
	}{out, next})
}

// jobID parses the {id} path value.
func jobID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		writeStatusError(w, badRequest("invalid_field", "id", "must be a positive integer job id"))
		return 0, false
	}
	return id, true
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	s.jobAction(w, r, s.client.Get)
}

func (s *Server) handleRetry(w http.ResponseWriter, r *http.Request) {
	s.jobAction(w, r, s.client.Retry)
}

func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	s.jobAction(w, r, s.client.Cancel)
}

func (s *Server) jobAction(w http.ResponseWriter, r *http.Request, do func(context.Context, int64) (*herald.Job, error)) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	j, err := do(r.Context(), id)
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, renderJob(j))
}

// keyJSON is GET /v1/keys/{key}'s answer.
type keyJSON struct {
	Key     string   `json:"key"`
	Pending int64    `json:"pending"`
	Head    *jobJSON `json:"head"`
	// WaitingOn says why the key's line is not moving, or that it is ready.
	WaitingOn string    `json:"waiting_on"`
	RetryAt   timestamp `json:"retry_at,omitzero"`
	RunAt     timestamp `json:"run_at,omitzero"`
}

func (s *Server) handleKey(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if !utf8.ValidString(key) || strings.IndexByte(key, 0) >= 0 {
		writeStatusError(w, badRequest("invalid_field", "key", "must be UTF-8 without NUL bytes"))
		return
	}
	line, err := s.client.Line(r.Context(), key)
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	out := keyJSON{Key: key, Pending: line.Pending, Head: renderJob(line.Head), WaitingOn: "empty"}
	if h := line.Head; h != nil {
		switch h.State {
		case herald.StateRunning:
			out.WaitingOn = "running"
		case herald.StateRetryable:
			out.WaitingOn, out.RetryAt = "retry_at", timestamp(h.RunAt)
		case herald.StateDiscarded:
			out.WaitingOn = "blocked"
		case herald.StateScheduled:
			out.WaitingOn, out.RunAt = "scheduled", timestamp(h.RunAt)
		case herald.StateAvailable:
			out.WaitingOn = "ready"
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// statsJSON is GET /v1/stats' answer.
type statsJSON struct {
	ByState                 map[herald.JobState]int64            `json:"by_state"`
	ByKind                  map[string]map[herald.JobState]int64 `json:"by_kind"`
	ReadyKeys               int64                                `json:"ready_keys"`
	OldestPendingAgeSeconds float64                              `json:"oldest_pending_age_seconds"`
	Counters                countersJSON                         `json:"counters"`
}

type countersJSON struct {
	Enqueued  int64                       `json:"enqueued"`
	Started   int64                       `json:"started"`
	Completed int64                       `json:"completed"`
	Failed    int64                       `json:"failed"`
	Discarded int64                       `json:"discarded"`
	Released  int64                       `json:"released"`
	Fenced    int64                       `json:"fenced"`
	Pruned    int64                       `json:"pruned"`
	Running   int                         `json:"running"`
	ByKind    map[string]kindCountersJSON `json:"by_kind"`
}

type kindCountersJSON struct {
	Enqueued  int64 `json:"enqueued"`
	Started   int64 `json:"started"`
	Completed int64 `json:"completed"`
	Failed    int64 `json:"failed"`
	Discarded int64 `json:"discarded"`
	Paused    bool  `json:"paused"`
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	allStates := []herald.JobState{
		herald.StateScheduled, herald.StateAvailable, herald.StateRunning, herald.StateRetryable,
		herald.StateCompleted, herald.StateDiscarded, herald.StateCancelled,
	}
	st, err := s.client.Stats(r.Context())
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	m, err := s.client.Metrics()
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	out := statsJSON{
		ByState:   make(map[herald.JobState]int64, len(allStates)),
		ByKind:    make(map[string]map[herald.JobState]int64, len(st.ByKindState)),
		ReadyKeys: st.ReadyKeys,
		Counters: countersJSON{
			Enqueued: m.Enqueued, Started: m.Started, Completed: m.Completed, Failed: m.Failed,
			Discarded: m.Discarded, Released: m.Released, Fenced: m.Fenced, Pruned: m.Pruned,
			Running: m.Running, ByKind: make(map[string]kindCountersJSON, len(m.ByKind)),
		},
	}
	for _, state := range allStates {
		out.ByState[state] = 0
	}
	for kind, byState := range st.ByKindState {
		out.ByKind[kind] = make(map[herald.JobState]int64, len(byState))
		for state, n := range byState {
			out.ByState[state] += n
			out.ByKind[kind][state] = n
		}
	}
	if !st.OldestPendingDueAt.IsZero() {
		out.OldestPendingAgeSeconds = max(s.opts.Clock.Now().Sub(st.OldestPendingDueAt).Seconds(), 0)
	}
	for kind, km := range m.ByKind {
		out.Counters.ByKind[kind] = kindCountersJSON{
			Enqueued: km.Enqueued, Started: km.Started, Completed: km.Completed,
			Failed: km.Failed, Discarded: km.Discarded, Paused: km.Paused,
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handlePause(w http.ResponseWriter, r *http.Request) {
	s.setPaused(w, r, true)
}

func (s *Server) handleResume(w http.ResponseWriter, r *http.Request) {
	s.setPaused(w, r, false)
}

func (s *Server) setPaused(w http.ResponseWriter, r *http.Request, paused bool) {
	kind := r.PathValue("kind")
	do := s.client.Resume
	if paused {
		do = s.client.Pause
	}
	if err := do(kind); err != nil {
		if errors.Is(err, herald.ErrUnknownKind) {
			writeError(w, http.StatusNotFound, apiError{Code: "unknown_kind", Field: "kind", Message: fmt.Sprintf("no kind %q is registered", kind)})
			return
		}
		s.writeClientError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Kind   string `json:"kind"`
		Paused bool   `json:"paused"`
	}{kind, paused})
}

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.isDraining() {
		s.unavailable(w, "draining", "the server is shutting down")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readyzTimeout)
	defer cancel()
	if err := s.client.Ping(ctx); err != nil {
		s.opts.Logger.LogAttrs(r.Context(), slog.LevelWarn, "readiness check failed", errAttr(err))
		s.unavailable(w, "not_ready", "the store does not answer")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDocument)
}

func writeStatusError(w http.ResponseWriter, e *statusError) {
	writeError(w, e.status, e.apiError)
}

// writeClientError maps an error from the client to its answer.
func (s *Server) writeClientError(w http.ResponseWriter, r *http.Request, err error) {
	field := ""
	msg := err.Error()
	if fe, ok := errors.AsType[*herald.FieldError](err); ok {
		field, msg = fe.Field, fe.Error()
	}
	switch {
	case errors.Is(err, herald.ErrUnknownKind):
		writeError(w, http.StatusUnprocessableEntity, apiError{Code: "unknown_kind", Field: field, Message: msg})
	case errors.Is(err, herald.ErrPayloadTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, apiError{Code: "payload_too_large", Field: field, Message: msg})
	case errors.Is(err, herald.ErrInvalidJob):
		writeError(w, http.StatusBadRequest, apiError{Code: "invalid_field", Field: field, Message: msg})
	case errors.Is(err, herald.ErrNotFound):
		writeError(w, http.StatusNotFound, apiError{Code: "not_found", Message: "no job with that id"})
	case errors.Is(err, herald.ErrWrongState):
		writeError(w, http.StatusConflict, apiError{Code: "wrong_state", Message: "the job is in the wrong state for this operation"})
	case errors.Is(err, herald.ErrCommitUnknown):
		s.unavailable(w, "commit_unknown", "the store could not confirm the write: its connection broke while it committed, or its flush to disk failed; it may or may not have been stored; retry with an idempotency_key to be safe")
	case errors.Is(err, herald.ErrUnavailable):
		s.unavailable(w, "store_unavailable", "the store cannot take writes right now (disk full, read-only, locked, or its database unreachable); retry later, with an idempotency_key if a duplicate would matter")
	case errors.Is(err, herald.ErrStopped), errors.Is(err, herald.ErrNotStarted):
		s.unavailable(w, "stopped", "the queue is not running; retry later")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		s.unavailable(w, "canceled", "the request was canceled or timed out")
	default:
		s.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "request failed", slog.String("method", r.Method), slog.String("path", r.URL.Path), errAttr(err))
		writeError(w, http.StatusInternalServerError, apiError{Code: "internal", Message: "internal error; see the server log"})
	}
}

func errAttr(err error) slog.Attr { return slog.String("error", err.Error()) }
