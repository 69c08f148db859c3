package httpapi

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/heraldmq/herald"
)

// This file is the enqueue routes' fast path: a single-pass, reflection-free
// reader for the request shapes clients send almost always, and a writer for
// the answers. encoding/json costs a request several passes over the body
// (the UTF-8 check, the exact-name check, the decode, the trailing-data
// check), reflection and allocations; at tens of thousands of requests a
// second that is a large share of the server's CPU.
//
// The fast path never decides an error and never guesses: the reader accepts
// a strict subset of JSON and reports false for anything outside it (string
// escapes in fields, null fields, duplicate names, unknown names, deep
// nesting, invalid UTF-8, malformed input); the caller then runs the
// encoding/json path, which accepts or refuses the request exactly as
// before. What the reader accepts it decodes to the same value encoding/json
// would, which the differential fuzz tests check (fastjson_test.go).

// fastMaxDepth bounds the nesting the reader skips inside a payload; deeper
// payloads take the encoding/json path, which has its own limit and message.
const fastMaxDepth = 64

// fastScanner reads one JSON document from data.
type fastScanner struct {
	data []byte
	pos  int
	// Set while skipping values, for payloadVerbatim: whitespace between
	// tokens, and characters encoding/json escapes in its output.
	sawSpace, sawEscapable bool
}

func (s *fastScanner) skipSpace() {
	start := s.pos
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			s.sawSpace = s.sawSpace || s.pos > start
			return
		}
	}
	s.sawSpace = s.sawSpace || s.pos > start
}

// consume skips whitespace and then c, reporting whether c was there.
func (s *fastScanner) consume(c byte) bool {
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// atEnd reports whether only whitespace is left.
func (s *fastScanner) atEnd() bool {
	s.skipSpace()
	return s.pos == len(s.data)
}

// plainString reads a string that has no escapes, no control characters and
// only valid UTF-8, returning its contents (aliasing data). Anything else
// reports false: such strings take the encoding/json path.
func (s *fastScanner) plainString() ([]byte, bool) {
	s.skipSpace()
	if s.pos >= len(s.data) || s.data[s.pos] != '"' {
		return nil, false
	}
	start := s.pos + 1
	for i := start; i < len(s.data); {
		c := s.data[i]
		switch {
		case c == '"':
			s.pos = i + 1
			return s.data[start:i], true
		case c == '\\' || c < 0x20:
			return nil, false
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(s.data[i:])
			if r == utf8.RuneError && size == 1 {
				return nil, false
			}
			i += size
		}
	}
	return nil, false
}

// skipString skips a string, escapes allowed. Escaped surrogates are refused
// (lone ones are where JSON decoders differ), as are control characters and
// invalid UTF-8.
func (s *fastScanner) skipString() bool {
	s.skipSpace()
	if s.pos >= len(s.data) || s.data[s.pos] != '"' {
		return false
	}
	for i := s.pos + 1; i < len(s.data); {
		c := s.data[i]
		switch {
		case c == '"':
			s.pos = i + 1
			return true
		case c == '\\':
			if i+1 >= len(s.data) {
				return false
			}
			switch s.data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r, ok := hex4(s.data[i+2:])
				if !ok || (r >= 0xD800 && r <= 0xDFFF) {
					return false
				}
				i += 6
			default:
				return false
			}
		case c < 0x20:
			return false
		case c < utf8.RuneSelf:
			if c == '<' || c == '>' || c == '&' {
				s.sawEscapable = true
			}
			i++
		default:
			r, size := utf8.DecodeRune(s.data[i:])
			if r == utf8.RuneError && size == 1 {
				return false
			}
			if r == '\u2028' || r == '\u2029' {
				s.sawEscapable = true
			}
			i += size
		}
	}
	return false
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// skipNumber skips a number in JSON's grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *fastScanner) skipNumber() bool {
	d, i := s.data, s.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(d) && d[i] == '.' {
		i++
		start := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		start := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	s.pos = i
	return true
}

func (s *fastScanner) skipLiteral(lit string) bool {
	if len(s.data)-s.pos < len(lit) || string(s.data[s.pos:s.pos+len(lit)]) != lit {
		return false
	}
	s.pos += len(lit)
	return true
}

// skipValue skips one value of any type, checking its syntax. What follows
// a value (a delimiter) is the caller's to check, so "truex" or "01" fail
// there.
func (s *fastScanner) skipValue(depth int) bool {
	s.skipSpace()
	if s.pos >= len(s.data) {
		return false
	}
	switch s.data[s.pos] {
	case '{':
		if depth >= fastMaxDepth {
			return false
		}
		s.pos++
		if s.consume('}') {
			return true
		}
		for {
			if !s.skipString() || !s.consume(':') || !s.skipValue(depth+1) {
				return false
			}
			if !s.consume(',') {
				return s.consume('}')
			}
		}
	case '[':
		if depth >= fastMaxDepth {
			return false
		}
		s.pos++
		if s.consume(']') {
			return true
		}
		for {
			if !s.skipValue(depth + 1) {
				return false
			}
			if !s.consume(',') {
				return s.consume(']')
			}
		}
	case '"':
		return s.skipString()
	case 't':
		return s.skipLiteral("true")
	case 'f':
		return s.skipLiteral("false")
	case 'n':
		return s.skipLiteral("null")
	default:
		return s.skipNumber()
	}
}

// int reads an integer without fraction or exponent, of at most 9 digits:
// small enough to need no overflow check even where int has 32 bits.
func (s *fastScanner) int() (int, bool) {
	s.skipSpace()
	start := s.pos
	if !s.skipNumber() {
		return 0, false
	}
	d := s.data[start:s.pos]
	neg := d[0] == '-'
	if neg {
		d = d[1:]
	}
	if len(d) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false // a fraction or an exponent
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// Bits of enqueueObject's seen set, one per field.
const (
	seenKind = 1 << iota
	seenKey
	seenPayload
	seenRunAt
	seenDelay
	seenMaxAttempts
	seenIdempotencyKey
)

// enqueueObject reads one enqueueRequest object. The payload aliases data.
func (s *fastScanner) enqueueObject(r *enqueueRequest) bool {
	if !s.consume('{') {
		return false
	}
	if s.consume('}') {
		return true
	}
	seen := 0
	for {
		name, ok := s.plainString()
		if !ok || !s.consume(':') {
			return false
		}
		var bit int
		switch string(name) {
		case "kind":
			bit = seenKind
			r.Kind, ok = s.stringValue()
		case "key":
			bit = seenKey
			r.Key, ok = s.stringValue()
		case "idempotency_key":
			bit = seenIdempotencyKey
			r.IdempotencyKey, ok = s.stringValue()
		case "run_at":
			bit = seenRunAt
			var v string
			v, ok = s.stringValue()
			r.RunAt = &v
		case "delay":
			bit = seenDelay
			var v string
			v, ok = s.stringValue()
			r.Delay = &v
		case "max_attempts":
			bit = seenMaxAttempts
			r.MaxAttempts, ok = s.int()
		case "payload":
			bit = seenPayload
			s.skipSpace()
			start := s.pos
			ok = s.skipValue(0)
			r.Payload = json.RawMessage(s.data[start:s.pos:s.pos])
		default:
			return false // unknown, or a name encoding/json might match another way
		}
		if !ok || seen&bit != 0 {
			return false // duplicate names take the slow path, which defines their meaning
		}
		seen |= bit
		if !s.consume(',') {
			return s.consume('}')
		}
	}
}

func (s *fastScanner) stringValue() (string, bool) {
	b, ok := s.plainString()
	return string(b), ok
}

// decodeEnqueueFast decodes a POST /v1/jobs body, reporting false when the
// body is outside the fast path's subset. The payload aliases body.
func decodeEnqueueFast(body []byte) (enqueueRequest, bool) {
	var r enqueueRequest
	s := fastScanner{data: body}
	if !s.enqueueObject(&r) || !s.atEnd() {
		return enqueueRequest{}, false
	}
	return r, true
}

// decodeBatchFast decodes a POST /v1/jobs/batch body, {"jobs":[...]} with
// at least one job, reporting false when it is outside the fast path's
// subset. Each payload is copied, so that a long-lived job does not keep the
// whole request body alive.
func decodeBatchFast(body []byte) ([]enqueueRequest, bool) {
	s := fastScanner{data: body}
	if !s.consume('{') {
		return nil, false
	}
	if name, ok := s.plainString(); !ok || string(name) != "jobs" || !s.consume(':') || !s.consume('[') {
		return nil, false
	}
	// A guess at the count from the size, so the slice rarely grows.
	jobs := make([]enqueueRequest, 0, min(len(body)/64+1, 16384))
	for {
		var r enqueueRequest
		if !s.enqueueObject(&r) {
			return nil, false
		}
		if r.Payload != nil {
			r.Payload = append(json.RawMessage(nil), r.Payload...)
		}
		jobs = append(jobs, r)
		if !s.consume(',') {
			break
		}
	}
	if !s.consume(']') || !s.consume('}') || !s.atEnd() {
		return nil, false
	}
	return jobs, true
}

// payloadVerbatim reports whether a raw JSON value is what json.Marshal
// would write for it (as a json.RawMessage): valid, compact, and without
// the characters it escapes (<, >, &, U+2028, U+2029).
func payloadVerbatim(raw []byte) bool {
	s := fastScanner{data: raw}
	return s.skipValue(0) && s.pos == len(raw) && !s.sawSpace && !s.sawEscapable
}

// appendPlainString appends s as a JSON string if it needs no escaping in
// encoding/json's output (printable ASCII other than ", \, <, >, &, or valid
// UTF-8 other than U+2028 and U+2029), reporting false otherwise.
func appendPlainString(dst []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return dst, false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
			return dst, false
		}
		i += size
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"'), true
}

// appendTimestamp appends t as timestamp.MarshalJSON writes it.
func appendTimestamp(dst []byte, t timestamp) []byte {
	if t.IsZero() {
		return append(dst, "null"...)
	}
	dst = append(dst, '"')
	dst = time.Time(t).UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// appendJobJSON appends j rendered as json.Marshal(renderJob(j)) would,
// reporting false (with dst unchanged in length) when j holds something the
// fast writer leaves to encoding/json: strings that need escapes, or a
// payload or output that is not compact or holds characters it escapes.
func appendJobJSON(dst []byte, j *herald.Job) ([]byte, bool) {
	orig := len(dst)
	fail := func() ([]byte, bool) { return dst[:orig], false }
	payload := j.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	if !payloadVerbatim(payload) || (len(j.Output) > 0 && !payloadVerbatim(j.Output)) {
		return fail()
	}
	var ok bool
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, j.ID, 10)
	dst = append(dst, `,"kind":`...)
	if dst, ok = appendPlainString(dst, j.Kind); !ok {
		return fail()
	}
	dst = append(dst, `,"key":`...)
	if dst, ok = appendPlainString(dst, j.Key); !ok {
		return fail()
	}
	dst = append(dst, `,"state":`...)
	if dst, ok = appendPlainString(dst, string(j.State)); !ok {
		return fail()
	}
	dst = append(dst, `,"attempt":`...)
	dst = strconv.AppendInt(dst, int64(j.Attempt), 10)
	dst = append(dst, `,"max_attempts":`...)
	dst = strconv.AppendInt(dst, int64(j.MaxAttempts), 10)
	dst = append(dst, `,"payload":`...)
	dst = append(dst, payload...)
	for _, f := range [...]struct {
		name string
		t    time.Time
	}{
		{`,"run_at":`, j.RunAt}, {`,"created_at":`, j.CreatedAt},
		{`,"started_at":`, j.StartedAt}, {`,"finished_at":`, j.FinishedAt},
	} {
		if !f.t.IsZero() { // omitzero
			dst = append(dst, f.name...)
			dst = appendTimestamp(dst, timestamp(f.t))
		}
	}
	dst = append(dst, `,"errors":[`...)
	for i, e := range j.Errors {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"at":`...)
		dst = appendTimestamp(dst, timestamp(e.At))
		dst = append(dst, `,"attempt":`...)
		dst = strconv.AppendInt(dst, int64(e.Attempt), 10)
		dst = append(dst, `,"message":`...)
		if dst, ok = appendPlainString(dst, e.Message); !ok {
			return fail()
		}
		dst = append(dst, '}')
	}
	dst = append(dst, ']')
	if len(j.Output) > 0 { // omitempty
		dst = append(dst, `,"output":`...)
		dst = append(dst, j.Output...)
	}
	return append(dst, '}'), true
}
