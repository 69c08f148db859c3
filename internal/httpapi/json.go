package httpapi

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/heraldmq/herald"
)

// apiError is the body of every error answer: {"error": apiError}.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

type errorBody struct {
	Error apiError `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own response types are marshaled; failing here is a bug.
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"cannot encode the response"}}`)
	}
	writeJSONBytes(w, status, append(b, '\n'))
}

// Header values shared by every answer. net/http only reads them, and a
// handler that adds a value appends to a slice at capacity, which copies;
// so sharing them saves two allocations per answer.
var (
	headerJSON    = []string{"application/json"}
	headerNoSniff = []string{"nosniff"}
)

// writeJSONBytes writes b, an encoded JSON answer ending in a newline.
func writeJSONBytes(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h["Content-Type"] = headerJSON
	h["X-Content-Type-Options"] = headerNoSniff
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, status int, e apiError) {
	writeJSON(w, status, errorBody{Error: e})
}

// statusError is an apiError with its HTTP status.
type statusError struct {
	status int
	apiError
}

func badRequest(code, field, format string, args ...any) *statusError {
	return &statusError{status: http.StatusBadRequest, apiError: apiError{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}}
}

// jsonContentType checks a request's Content-Type: application/json, with
// an optional charset that must be UTF-8.
func jsonContentType(header string) (string, bool) {
	if header == "application/json" {
		return "", true // what nearly every client sends; mime's parse allocates
	}
	if header == "" {
		return "Content-Type must be application/json", false
	}
	mt, params, err := mime.ParseMediaType(header)
	if err != nil || mt != "application/json" {
		return "Content-Type must be application/json", false
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return "the only supported charset is utf-8", false
	}
	return "", true
}

// readBody reads the (already size-limited) request body.
func readBody(r *http.Request) ([]byte, *statusError) {
	body, err := readAll(r.Body, r.ContentLength)
	if err != nil {
		if maxErr, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, &statusError{status: http.StatusRequestEntityTooLarge, apiError: apiError{
				Code: "request_too_large", Message: fmt.Sprintf("the request body exceeds %d bytes", maxErr.Limit),
			}}
		}
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			// The server's read timeout cut a client that sent too slowly.
			return nil, &statusError{status: http.StatusRequestTimeout, apiError: apiError{
				Code: "request_timeout", Message: "the request body did not arrive in time",
			}}
		}
		return nil, badRequest("unreadable_body", "", "cannot read the request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequest("empty_body", "", "the request body is empty; send a JSON object")
	}
	return body, nil
}

// readAll is io.ReadAll with a first buffer sized for the declared length
// (capped: the declaration may lie), so a body is read without regrowing
// and copying the buffer. The extra byte lets the final read see EOF.
func readAll(r io.Reader, declared int64) ([]byte, error) {
	size := int64(512) // unknown length: io.ReadAll's start
	if declared > 0 {
		size = min(declared, 1<<20) + 1
	}
	b := make([]byte, 0, size)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// decodeObject decodes one JSON object from data into v, refusing unknown
// fields and trailing data. Field names in errors get prefix (e.g. "jobs[3].").
//
// encoding/json silently replaces invalid UTF-8 with U+FFFD, which would
// store a key other than the one sent; so invalid UTF-8 is refused first,
// naming the field that holds it.
func decodeObject(data []byte, v any, prefix string) *statusError {
	if !utf8.Valid(data) {
		field := invalidUTF8Field(data)
		if field != "" {
			field = prefix + field
		}
		return badRequest("invalid_utf8", field, "the request contains invalid UTF-8")
	}
	return decodeStrict(data, v, prefix)
}

// decodeStrict is decodeObject without the UTF-8 check, for objects whose
// raw parts (json.RawMessage) are checked one by one afterwards.
func decodeStrict(data []byte, v any, prefix string) *statusError {
	// encoding/json matches field names case-insensitively; an API that
	// accepts "Kind" for "kind" invites clients that break later. Names
	// must match exactly. (Non-objects fail in the Decode below.)
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) == nil {
		known := fieldNames(reflect.TypeOf(v))
		for _, name := range slices.Sorted(maps.Keys(obj)) {
			if !known[name] {
				return badRequest("unknown_field", prefix+name, "unknown field %q", name)
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err, prefix)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("malformed_json", "", "unexpected data after the JSON object")
	}
	return nil
}

// invalidUTF8Field names the top-level field of a JSON object whose name or
// value holds invalid UTF-8, or "" if it cannot tell.
func invalidUTF8Field(data []byte) string {
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) != nil {
		return ""
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		if !utf8.Valid(obj[k]) {
			return k
		}
	}
	return ""
}

// fieldNames lists the JSON names of the fields of the struct t points to.
func fieldNames(t reflect.Type) map[string]bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	names := map[string]bool{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "-" && f.IsExported() {
			names[cmp.Or(name, f.Name)] = true
		}
	}
	return names
}

func decodeError(err error, prefix string) *statusError {
	if syn, ok := errors.AsType[*json.SyntaxError](err); ok {
		return badRequest("malformed_json", "", "malformed JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	}
	if typ, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if typ.Field == "" {
			return badRequest("invalid_type", "", "the body must be a JSON object, not %s", typ.Value)
		}
		return badRequest("invalid_type", prefix+typ.Field, "must be %s, not %s", jsonTypeName(typ.Type), typ.Value)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return badRequest("malformed_json", "", "malformed JSON: unexpected end of input")
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if unq, err := strconv.Unquote(name); err == nil {
			name = unq
		}
		return badRequest("unknown_field", prefix+name, "unknown field %q", name)
	}
	return badRequest("malformed_json", "", "malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// jsonTypeName names a Go type the way a JSON client thinks of it.
func jsonTypeName(t reflect.Type) string {
	if t == nil {
		return "a valid value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	default:
		return "a valid value"
	}
}

// timestamp renders a time as RFC 3339 in UTC; zero times are omitted
// (with omitzero) or null.
type timestamp time.Time

func (t timestamp) IsZero() bool { return time.Time(t).IsZero() }

func (t timestamp) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return []byte(`"` + time.Time(t).UTC().Format(time.RFC3339Nano) + `"`), nil
}

// jobJSON is a job as the API renders it.
type jobJSON struct {
	ID          int64           `json:"id"`
	Kind        string          `json:"kind"`
	Key         string          `json:"key"`
	State       string          `json:"state"`
	Attempt     int             `json:"attempt"`
	MaxAttempts int             `json:"max_attempts"`
	Payload     json.RawMessage `json:"payload"`
	RunAt       timestamp       `json:"run_at,omitzero"`
	CreatedAt   timestamp       `json:"created_at,omitzero"`
	StartedAt   timestamp       `json:"started_at,omitzero"`
	FinishedAt  timestamp       `json:"finished_at,omitzero"`
	Errors      []attemptJSON   `json:"errors"`
	// Output is what the handler last recorded (herald.RecordOutput), e.g.
	// an email's per-recipient replies; absent when nothing was.
	Output json.RawMessage `json:"output,omitempty"`
}

type attemptJSON struct {
	At      timestamp `json:"at"`
	Attempt int       `json:"attempt"`
	Message string    `json:"message"`
}

func renderJob(j *herald.Job) *jobJSON {
	if j == nil {
		return nil
	}
	payload := j.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	out := &jobJSON{
		ID: j.ID, Kind: j.Kind, Key: j.Key, State: string(j.State),
		Attempt: j.Attempt, MaxAttempts: j.MaxAttempts, Payload: payload,
		RunAt: timestamp(j.RunAt), CreatedAt: timestamp(j.CreatedAt),
		StartedAt: timestamp(j.StartedAt), FinishedAt: timestamp(j.FinishedAt),
		Errors: make([]attemptJSON, 0, len(j.Errors)), Output: j.Output,
	}
	for _, e := range j.Errors {
		out.Errors = append(out.Errors, attemptJSON{At: timestamp(e.At), Attempt: e.Attempt, Message: e.Message})
	}
	return out
}
