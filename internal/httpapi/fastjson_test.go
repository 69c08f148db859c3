package httpapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/store"
)

// enqueueBodies are request bodies for the decoder tests and fuzz seeds;
// fast says whether the fast path must take the body (the shapes clients
// send, so that a change cannot quietly send them down the slow path).
var enqueueBodies = []struct {
	body string
	fast bool
}{
	{`{"kind":"noop","key":"k1","payload":{"n":1}}`, true},
	{`{"kind":"bench","key":"k17","payload":{"n":17}}`, true},
	{" \n{ \"kind\" : \"noop\" ,\t\"payload\" : [1, 2.5e-3, -0, true, false, null, \"x\"] } \r\n", true},
	{`{"payload":null,"kind":"noop"}`, true},
	{`{"kind":"email","key":"anna@example.org","payload":{"to":["anna@example.org"],"subject":"Grüße \"du\"\n","html":"<b>&amp;</b>"},"max_attempts":5,"idempotency_key":"order-17"}`, true},
	{`{"kind":"noop","payload":{},"run_at":"2030-01-02T15:04:05Z"}`, true},
	{`{"kind":"noop","payload":{},"delay":"1h30m"}`, true},
	{`{"kind":"noop","payload":{},"run_at":"x","delay":"y"}`, true}, // decodes; params refuses it
	{`{"kind":"noop","payload":"\u00e9\ud83d\ude00"}`, false},       // escaped surrogates: slow path
	{`{"kind":"noop","payload":{"a":{"b":{"c":[[[[]]]]}}}}`, true},
	{`{"kind":"noop","payload":{},"max_attempts":-3}`, true},
	{`{"kind":"noop","payload":{},"max_attempts":-0}`, true},
	{`{}`, true},
	// Outside the subset: encoding/json decides.
	{`{"kind":"no\u006fp","payload":{}}`, false},
	{`{"kind":null,"payload":{}}`, false},
	{`{"Kind":"noop","payload":{}}`, false},
	{`{"kind":"noop","kind":"noop","payload":{}}`, false},
	{`{"kind":"noop","payload":{},"extra":1}`, false},
	{`{"kind":"noop","payload":{},"max_attempts":1.0}`, false},
	{`{"kind":"noop","payload":{},"max_attempts":1e2}`, false},
	{`{"kind":"noop","payload":{},"max_attempts":999999999}`, true},
	{`{"kind":"noop","payload":{},"max_attempts":1000000000}`, false}, // 10 digits: encoding/json checks the range
	{`{"kind":"noop","payload":{},"max_attempts":99999999999999999999}`, false},
	{`{"kind":"noop","payload":01}`, false},
	{`{"kind":"noop","payload":{"a":1,}}`, false},
	{`{"kind":"noop","payload":truex}`, false},
	{`{"kind":"noop","payload":"\x"}`, false},
	{"{\"kind\":\"noop\",\"payload\":\"a\tb\"}", false},
	{"{\"kind\":\"n\xffp\",\"payload\":{}}", false},
	{"{\"kind\":\"noop\",\"payload\":\"\xed\xa0\x80\"}", false},
	{`{"kind":"noop","payload":{}} {}`, false},
	{`{"kind":"noop","payload":{}`, false},
	{`[{"kind":"noop","payload":{}}]`, false},
	{`{"kind":"noop","payload":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, false},
	{`null`, false},
	{``, false},
}

// slowEnqueue is the encoding/json path's decode of a POST /v1/jobs body.
func slowEnqueue(body []byte) (enqueueRequest, *statusError) {
	var r enqueueRequest
	serr := decodeObject(body, &r, "")
	return r, serr
}

// checkEnqueueFast checks the fast decoder against encoding/json on body:
// whatever it accepts, encoding/json must accept and decode to the same
// request. It reports whether the fast path took the body.
func checkEnqueueFast(t *testing.T, body []byte) bool {
	t.Helper()
	fast, ok := decodeEnqueueFast(body)
	if !ok {
		return false
	}
	slow, serr := slowEnqueue(body)
	if serr != nil {
		t.Fatalf("fast path accepted %q; encoding/json refuses it: %+v", body, serr)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("body %q: fast path decoded %s; encoding/json %s", body, describe(fast), describe(slow))
	}
	return true
}

func describe(r enqueueRequest) string {
	deref := func(p *string) any {
		if p == nil {
			return nil
		}
		return *p
	}
	b, _ := json.Marshal([]any{r.Kind, r.Key, string(r.Payload), deref(r.RunAt), deref(r.Delay), r.MaxAttempts, r.IdempotencyKey})
	return string(b)
}

func TestDecodeEnqueueFast(t *testing.T) {
	for _, tc := range enqueueBodies {
		if got := checkEnqueueFast(t, []byte(tc.body)); got != tc.fast {
			t.Errorf("fast path took %q: %v; want %v", tc.body, got, tc.fast)
		}
	}
}

// batchBody wraps job bodies in a batch.
func batchBody(jobs ...string) string { return `{"jobs":[` + strings.Join(jobs, ",") + `]}` }

func TestDecodeBatchFast(t *testing.T) {
	job := `{"kind":"noop","key":"k","payload":{"n":1}}`
	for _, tc := range []struct {
		body string
		fast bool
	}{
		{batchBody(job), true},
		{batchBody(job, job, `{"kind":"noop","payload":[1,2]}`), true},
		{" { \"jobs\" : [ " + job + " , " + job + " ] } \n", true},
		{batchBody(`{}`), true}, // decodes; params refuses it
		{batchBody(), false},
		{`{"jobs":null}`, false},
		{`{"jobs":[` + job + `],"jobs":[` + job + `]}`, false},
		{`{"jobs":[` + job + `],"x":1}`, false},
		{`{"Jobs":[` + job + `]}`, false},
		{batchBody(job, `null`), false},
		{batchBody(job, `{"kind":"noop","payload":{},"kind":"x"}`), false},
		{batchBody(job) + "x", false},
		{`{"jobs":[` + job + `,]}`, false},
	} {
		if got := checkBatchFast(t, []byte(tc.body)); got != tc.fast {
			t.Errorf("fast path took %q: %v; want %v", tc.body, got, tc.fast)
		}
	}
}

// checkBatchFast is checkEnqueueFast for batch bodies; payloads must not
// alias the body.
func checkBatchFast(t *testing.T, body []byte) bool {
	t.Helper()
	fast, ok := decodeBatchFast(body)
	if !ok {
		return false
	}
	var req struct {
		Jobs []json.RawMessage `json:"jobs"`
	}
	if serr := decodeStrict(body, &req, ""); serr != nil {
		t.Fatalf("fast path accepted %q; encoding/json refuses it: %+v", body, serr)
	}
	if len(fast) != len(req.Jobs) {
		t.Fatalf("body %q: fast path decoded %d jobs; encoding/json %d", body, len(fast), len(req.Jobs))
	}
	for i, raw := range req.Jobs {
		slow, serr := slowEnqueue(raw)
		if serr != nil {
			t.Fatalf("fast path accepted %q; encoding/json refuses job %d: %+v", body, i, serr)
		}
		if !reflect.DeepEqual(fast[i], slow) {
			t.Fatalf("body %q job %d: fast path decoded %s; encoding/json %s", body, i, describe(fast[i]), describe(slow))
		}
		if p := fast[i].Payload; len(p) > 0 {
			p[0] = ' ' // must not write into the body
		}
	}
	return true
}

func FuzzFastDecodeEnqueue(f *testing.F) {
	for _, tc := range enqueueBodies {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkEnqueueFast(t, body) })
}

func FuzzFastDecodeBatch(f *testing.F) {
	for _, tc := range enqueueBodies {
		f.Add([]byte(batchBody(tc.body)))
		f.Add([]byte(batchBody(tc.body, tc.body)))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkBatchFast(t, body) })
}

// checkJobJSON checks the fast writer against json.Marshal on j, reporting
// whether the fast writer took it.
func checkJobJSON(t *testing.T, j *herald.Job) bool {
	t.Helper()
	want, err := json.Marshal(renderJob(j))
	prefix := []byte("prefix")
	got, ok := appendJobJSON(bytes.Clone(prefix), j)
	if !ok {
		if !bytes.Equal(got, prefix) {
			t.Fatalf("appendJobJSON failed but changed dst to %q", got)
		}
		return false
	}
	if err != nil {
		t.Fatalf("fast writer took a job json.Marshal refuses (%v): %q", err, got)
	}
	if !bytes.Equal(got[len(prefix):], want) {
		t.Fatalf("fast writer wrote\n%s\njson.Marshal\n%s", got[len(prefix):], want)
	}
	return true
}

func TestAppendJobJSON(t *testing.T) {
	at := time.Date(2030, 1, 2, 15, 4, 5, 123456789, time.FixedZone("x", 3600))
	base := func() *herald.Job {
		return &herald.Job{
			ID: 42, Kind: "noop", Key: "k17", State: herald.StateAvailable, MaxAttempts: 25,
			Payload: json.RawMessage(`{"n":17}`), RunAt: at, CreatedAt: at.Add(-time.Second),
		}
	}
	for _, tc := range []struct {
		name   string
		change func(j *herald.Job)
		fast   bool
	}{
		{"new job", func(*herald.Job) {}, true},
		{"no payload", func(j *herald.Job) { j.Payload = nil }, true},
		{"finished with errors and output", func(j *herald.Job) {
			j.State, j.Attempt, j.StartedAt, j.FinishedAt = herald.StateCompleted, 2, at, at.Add(time.Millisecond)
			j.Errors = []store.AttemptError{{At: at, Attempt: 1, Message: "remote answered 429"}}
			j.Output = json.RawMessage(`{"last_reply":"250 ok"}`)
		}, true},
		{"unicode key", func(j *herald.Job) { j.Key = "anna@exämple.org 😀" }, true},
		{"zero times", func(j *herald.Job) { j.RunAt, j.CreatedAt = time.Time{}, time.Time{} }, true},
		{"error time zero", func(j *herald.Job) { j.Errors = []store.AttemptError{{Attempt: 1, Message: "x"}} }, true},
		{"escapes in payload strings", func(j *herald.Job) { j.Payload = json.RawMessage(`{"s":"a\"b\\c\u00e9\n"}`) }, true},
		{"far years", func(j *herald.Job) { j.RunAt = time.Date(12345, 1, 1, 0, 0, 0, 0, time.UTC) }, true},
		// Left to encoding/json.
		{"html in payload", func(j *herald.Job) { j.Payload = json.RawMessage(`{"h":"<b>"}`) }, false},
		{"spaced payload", func(j *herald.Job) { j.Payload = json.RawMessage(`{"n": 1}`) }, false},
		{"line separator in payload", func(j *herald.Job) { j.Payload = json.RawMessage("\"\u2028\"") }, false},
		{"quote in key", func(j *herald.Job) { j.Key = `a"b` }, false},
		{"ampersand in kind", func(j *herald.Job) { j.Kind = "a&b" }, false},
		{"newline in error", func(j *herald.Job) { j.Errors = []store.AttemptError{{At: at, Attempt: 1, Message: "a\nb"}} }, false},
		{"invalid UTF-8 key", func(j *herald.Job) { j.Key = "a\xffb" }, false},
		{"spaced output", func(j *herald.Job) { j.Output = json.RawMessage(`[1, 2]`) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := base()
			tc.change(j)
			if got := checkJobJSON(t, j); got != tc.fast {
				t.Errorf("fast writer took it: %v; want %v", got, tc.fast)
			}
		})
	}
}

func FuzzAppendJobJSON(f *testing.F) {
	f.Add(int64(1), "noop", "k1", "available", []byte(`{"n":1}`), []byte(nil), "", int64(0), int64(1_900_000_000_123_456_789))
	f.Add(int64(-5), "email", "anna@exämple.org", "discarded", []byte(`{"h":"<b>","s":"a\"b"}`), []byte(`{"r":[1,2]}`), "remote said \"no\"", int64(1), int64(-62135596800_000_000_0))
	f.Add(int64(7), "a\u2028b", "\x00", "x", []byte(" [1, 2] "), []byte("null"), "a\xffb", int64(3), int64(0))
	f.Fuzz(func(t *testing.T, id int64, kind, key, state string, payload, output []byte, msg string, attempt, unixNano int64) {
		at := time.Unix(0, unixNano)
		j := &herald.Job{
			ID: id, Kind: kind, Key: key, State: herald.JobState(state), Attempt: int(attempt), MaxAttempts: int(attempt) * 2,
			Payload: payload, Output: output, RunAt: at, CreatedAt: at.Add(time.Hour),
		}
		if msg != "" {
			j.Errors = []store.AttemptError{{At: at, Attempt: 1, Message: msg}}
		}
		checkJobJSON(t, j)
	})
}

// FuzzPayloadVerbatim checks that what payloadVerbatim accepts is written by
// json.Marshal exactly as it is.
func FuzzPayloadVerbatim(f *testing.F) {
	for _, s := range []string{`{"n":1}`, `{"n": 1}`, `"<"`, `[1,"\u2028",{"a":null}]`, `01`, `"\ud800"`, "\"\xff\"", `1e5`, `-0.5E+3`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !payloadVerbatim(raw) {
			return
		}
		got, err := json.Marshal(json.RawMessage(raw))
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("payloadVerbatim(%q) but json.Marshal gives %q, %v", raw, got, err)
		}
	})
}
