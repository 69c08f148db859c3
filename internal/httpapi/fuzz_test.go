package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
)

// fuzzServe posts body to path on b and checks the invariants every answer
// keeps: no 5xx other than 503, and errors in the documented shape.
func fuzzServe(t *testing.T, b *testBundle, path string, body []byte) {
	t.Helper()
	rec := b.serve(b.newRequest(http.MethodPost, path, body))
	if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("POST %s %q = %d %s", path, body, rec.Code, rec.Body)
	}
	if rec.Code < 400 {
		return
	}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	if err := dec.Decode(&e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("POST %s %q = %d with body %s: not the error shape (%v)", path, body, rec.Code, rec.Body, err)
	}
}

func fuzzBundle(f *testing.F) *testBundle {
	f.Helper()
	return setup(f, Options{
		MaxRequestBytes: 256 << 10,
		Topics:          map[string]Topic{"signup": {Kind: "noop", KeyField: "account"}},
	})
}

func FuzzDecodeJob(f *testing.F) {
	b := fuzzBundle(f)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzServe(t, b, "/v1/jobs", body) })
}

func FuzzDecodeBatch(f *testing.F) {
	b := fuzzBundle(f)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzServe(t, b, "/v1/jobs/batch", body) })
}

func FuzzEvents(f *testing.F) {
	b := fuzzBundle(f)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzServe(t, b, "/v1/events/signup", body) })
}

// FuzzMailings posts arbitrary bodies to the seed 001 mailings endpoint,
// backed by a real email kind and SMTP server, in both shapes.
func FuzzMailings(f *testing.F) {
	b := setupMail(f, true)
	f.Add([]byte(seed001))
	f.Add([]byte(`[{"Subject":"s","Body":"b","Addresses":["a@example.org","bad"],"Token":"t"}]`))
	f.Add([]byte(`[{"Subject":"a\r\nBcc: evil@example.org","Body":"b","Addresses":["a@example.org"]}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"Subject":"not an array"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		fuzzServe(t, b.testBundle, "/v1/mailings", body)
		fuzzServe(t, b.testBundle, "/v1/mailings?split=recipient", body)
	})
}
