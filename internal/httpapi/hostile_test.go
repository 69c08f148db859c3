package httpapi

import (
	"bytes"
	"cmp"
	"net/http"
	"strings"
	"testing"
)

// hostileCase is one bad, oversized, unauthenticated or ill-timed request.
type hostileCase struct {
	name        string
	opts        func(*Options)
	prepare     func(*testBundle)
	path        string // defaults to POST /v1/jobs
	body        string
	contentType string // defaults to application/json; "-" sends none
	auth        string // defaults to the valid token; "-" sends none
	status      int
	code        string
	field       string
	retryAfter  bool
}

// hostileLimit is the request size limit the hostile cases run with.
const hostileLimit = 1 << 20

func hostileCases() []hostileCase {
	nested := func(depth int) string {
		return `{"kind":"noop","payload":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
	}
	return []hostileCase{
		// Malformed and mistyped JSON.
		{name: "malformed JSON", body: `{"kind":"noop",`, status: 400, code: "malformed_json"},
		{name: "not JSON", body: `kind=noop`, status: 400, code: "malformed_json"},
		{name: "empty body", body: ``, status: 400, code: "empty_body"},
		{name: "array body", body: `[{"kind":"noop"}]`, status: 400, code: "invalid_type"},
		{name: "trailing garbage", body: `{"kind":"noop","payload":{}}xyz`, status: 400, code: "malformed_json"},
		{name: "two objects", body: `{"kind":"noop","payload":{}}{"kind":"noop","payload":{}}`, status: 400, code: "malformed_json"},
		{name: "unknown field", body: `{"kind":"noop","payload":{},"priority":9}`, status: 400, code: "unknown_field", field: "priority"},
		{name: "field name case", body: `{"Kind":"noop","payload":{},"KEY":"x"}`, status: 400, code: "unknown_field", field: "KEY"},
		{name: "kind is a number", body: `{"kind":7,"payload":{}}`, status: 400, code: "invalid_type", field: "kind"},
		{name: "key is an object", body: `{"kind":"noop","key":{},"payload":{}}`, status: 400, code: "invalid_type", field: "key"},
		{name: "max_attempts is a string", body: `{"kind":"noop","payload":{},"max_attempts":"3"}`, status: 400, code: "invalid_type", field: "max_attempts"},
		{name: "max_attempts negative", body: `{"kind":"noop","payload":{},"max_attempts":-1}`, status: 400, code: "invalid_field", field: "max_attempts"},
		{name: "huge number", body: `{"kind":"noop","payload":{},"max_attempts":1e400}`, status: 400, code: "invalid_type", field: "max_attempts"},
		{name: "huge integer", body: `{"kind":"noop","payload":{},"max_attempts":99999999999999999999999}`, status: 400, code: "invalid_type", field: "max_attempts"},
		{name: "fractional integer", body: `{"kind":"noop","payload":{},"max_attempts":1.5}`, status: 400, code: "invalid_type", field: "max_attempts"},
		{name: "delay as integer", body: `{"kind":"noop","payload":{},"delay":30000}`, status: 400, code: "invalid_type", field: "delay"},
		{name: "delay unparsable", body: `{"kind":"noop","payload":{},"delay":"soon"}`, status: 400, code: "invalid_field", field: "delay"},
		{name: "delay negative", body: `{"kind":"noop","payload":{},"delay":"-5s"}`, status: 400, code: "invalid_field", field: "delay"},
		{name: "run_at and delay", body: `{"kind":"noop","payload":{},"delay":"5s","run_at":"2030-01-01T00:00:00Z"}`, status: 400, code: "invalid_field", field: "delay"},
		{name: "run_at not RFC 3339", body: `{"kind":"noop","payload":{},"run_at":"tomorrow"}`, status: 400, code: "invalid_field", field: "run_at"},
		{name: "payload missing", body: `{"kind":"noop"}`, status: 400, code: "invalid_field", field: "payload"},
		{name: "kind missing", body: `{"payload":{}}`, status: 400, code: "invalid_field", field: "kind"},
		// Text that would be stored as something else.
		{name: "invalid UTF-8 in key", body: "{\"kind\":\"noop\",\"key\":\"a\xff\xfeb\",\"payload\":{}}", status: 400, code: "invalid_utf8", field: "key"},
		{name: "invalid UTF-8 in payload", body: "{\"kind\":\"noop\",\"payload\":{\"x\":\"\xc3\x28\"}}", status: 400, code: "invalid_utf8", field: "payload"},
		{name: "escaped NUL in key", body: `{"kind":"noop","key":"a\u0000b","payload":{}}`, status: 400, code: "invalid_field", field: "key"},
		{name: "raw NUL in key", body: "{\"kind\":\"noop\",\"key\":\"a\x00b\",\"payload\":{}}", status: 400, code: "malformed_json"},
		{name: "NUL in idempotency key", body: `{"kind":"noop","payload":{},"idempotency_key":"\u0000"}`, status: 400, code: "invalid_field", field: "idempotency_key"},
		{name: "key too long", body: `{"kind":"noop","payload":{},"key":"` + strings.Repeat("k", 513) + `"}`, status: 400, code: "invalid_field", field: "key"},
		// Nesting and size.
		{name: "nesting beyond the decoder's limit", body: nested(20_000), status: 400, code: "malformed_json"},
		{name: "10 MiB body over a 1 MiB limit", body: `{"kind":"noop","payload":"` + strings.Repeat("a", 10<<20) + `"}`, status: 413, code: "request_too_large"},
		{
			name: "payload over the client's limit", opts: func(o *Options) { o.MaxRequestBytes = 4 << 20 },
			body:   `{"kind":"noop","payload":"` + strings.Repeat("a", 2<<20) + `"}`,
			status: 413, code: "payload_too_large", field: "payload",
		},
		// Headers.
		{name: "wrong content type", contentType: "text/plain", body: `{"kind":"noop","payload":{}}`, status: 415, code: "unsupported_media_type"},
		{name: "no content type", contentType: "-", body: `{"kind":"noop","payload":{}}`, status: 415, code: "unsupported_media_type"},
		{name: "form content type", contentType: "application/x-www-form-urlencoded", body: `kind=noop`, status: 415, code: "unsupported_media_type"},
		{name: "other charset", contentType: "application/json; charset=latin1", body: `{"kind":"noop","payload":{}}`, status: 415, code: "unsupported_media_type"},
		{name: "events wrong content type", path: "/v1/events/signup", contentType: "text/plain", body: `{"account":"a"}`, status: 415, code: "unsupported_media_type"},
		{name: "batch wrong content type", path: "/v1/jobs/batch", contentType: "application/xml", body: `{"jobs":[]}`, status: 415, code: "unsupported_media_type"},
		// Semantics.
		{name: "unknown kind", body: `{"kind":"nope","payload":{}}`, status: 422, code: "unknown_kind", field: "kind"},
		{name: "events unknown topic", path: "/v1/events/nope", body: `{}`, status: 404, code: "unknown_topic"},
		{name: "events missing key field", path: "/v1/events/signup", body: `{"other":1}`, status: 422, code: "missing_key_field", field: "account"},
		// Authentication.
		{name: "missing auth", auth: "-", body: `{"kind":"noop","payload":{}}`, status: 401, code: "unauthorized"},
		{name: "wrong token", auth: "Bearer wrong", body: `{"kind":"noop","payload":{}}`, status: 401, code: "unauthorized"},
		{name: "missing auth on batch", auth: "-", path: "/v1/jobs/batch", body: `{"jobs":[{"kind":"noop","payload":{}}]}`, status: 401, code: "unauthorized"},
		// Load shedding.
		{
			name: "draining", prepare: func(b *testBundle) { b.server.SetDraining(true) },
			body: `{"kind":"noop","payload":{}}`, status: 503, code: "draining", retryAfter: true,
		},
		{
			name: "draining batch", prepare: func(b *testBundle) { b.server.SetDraining(true) }, path: "/v1/jobs/batch",
			body: `{"jobs":[{"kind":"noop","payload":{}}]}`, status: 503, code: "draining", retryAfter: true,
		},
		{
			name: "backlog over limit", opts: func(o *Options) { o.MaxBacklog = 10; o.Backlog = func() int64 { return 11 } },
			body: `{"kind":"noop","payload":{}}`, status: 429, code: "backlog_full", retryAfter: true,
		},
		{
			name: "backlog over limit on events", opts: func(o *Options) { o.MaxBacklog = 10; o.Backlog = func() int64 { return 11 } },
			path: "/v1/events/signup", body: `{"account":"a"}`, status: 429, code: "backlog_full", retryAfter: true,
		},
	}
}

// options are the server options of the case.
func (tt hostileCase) options() Options {
	opts := Options{
		Tokens:          []string{testToken},
		MaxRequestBytes: hostileLimit,
		Topics:          map[string]Topic{"signup": {Kind: "noop", KeyField: "account"}},
	}
	if tt.opts != nil {
		tt.opts(&opts)
	}
	return opts
}

// request is the case's request, for the in-process handler.
func (tt hostileCase) request(b *testBundle) *http.Request {
	path := cmp.Or(tt.path, "/v1/jobs")
	r := b.newRequest(http.MethodPost, path, []byte(tt.body))
	switch tt.contentType {
	case "":
	case "-":
		r.Header.Del("Content-Type")
	default:
		r.Header.Set("Content-Type", tt.contentType)
	}
	switch tt.auth {
	case "":
	case "-":
		r.Header.Del("Authorization")
	default:
		r.Header.Set("Authorization", tt.auth)
	}
	return r
}

// TestHostileRequests sends bad, oversized, unauthenticated and ill-timed
// requests. Each must get a clear 4xx/5xx in the documented error shape,
// store nothing, and leave the server serving.
func TestHostileRequests(t *testing.T) {
	t.Parallel()
	for _, tt := range hostileCases() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.options())
			if tt.prepare != nil {
				tt.prepare(b)
			}
			r := tt.request(b)
			rec := b.serve(r)
			checkError(t, rec, tt.status, tt.code, tt.field)
			if got := rec.Header().Get("Retry-After"); (got != "") != tt.retryAfter {
				t.Errorf("Retry-After = %q; want set: %v", got, tt.retryAfter)
			}
			if jobs := b.storedJobs(t); len(jobs) != 0 {
				t.Errorf("%d jobs stored after a refused request", len(jobs))
			}

			// The server still serves: reads always, writes unless refusing
			// them is the point of the case.
			if rec := b.do(http.MethodGet, "/v1/stats", ""); rec.Code != http.StatusOK {
				t.Errorf("GET /v1/stats afterwards = %d %s", rec.Code, rec.Body)
			}
			if !tt.retryAfter {
				b.enqueue(t, `{"kind":"noop","payload":{"after":true}}`)
			}
		})
	}
}

// TestAcceptedOddities: unusual but valid requests are stored, verbatim.
func TestAcceptedOddities(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{MaxRequestBytes: 1 << 20})
	tests := []struct {
		name        string
		body        string
		contentType string
		payload     string
	}{
		{name: "deeply nested payload", body: `{"kind":"noop","payload":` + strings.Repeat(`{"a":`, 5000) + `1` + strings.Repeat("}", 5000) + `}`},
		{name: "huge number in payload", body: `{"kind":"noop","payload":{"n":1e400,"m":123456789012345678901234567890}}`, payload: `{"n":1e400,"m":123456789012345678901234567890}`},
		{name: "charset utf-8", contentType: "application/json; charset=UTF-8", body: `{"kind":"noop","payload":"x"}`, payload: `"x"`},
		{name: "null payload", body: `{"kind":"noop","payload":null}`, payload: `null`},
		{name: "unicode key", body: `{"kind":"noop","key":"ключ-🔑","payload":{}}`, payload: `{}`},
		{name: "escaped unicode", body: `{"kind":"noop","key":"\u00e9","payload":"\u00e9\ud83d\ude00"}`, payload: `"\u00e9\ud83d\ude00"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.newRequest(http.MethodPost, "/v1/jobs", []byte(tt.body))
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			rec := b.serve(r)
			if rec.Code != http.StatusCreated {
				t.Fatalf("status %d %.300s", rec.Code, rec.Body)
			}
			j := decode[jobJSONTest](t, rec)
			stored, err := b.client.Get(t.Context(), j.ID)
			if err != nil {
				t.Fatal(err)
			}
			if tt.payload != "" && !bytes.Equal(stored.Payload, []byte(tt.payload)) {
				t.Errorf("stored payload %s; want %s", stored.Payload, tt.payload)
			}
		})
	}
}
