package bench

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// The load generator's connection must report each answer's status, read
// whole answers (so the next one starts in the right place), send the body
// intact, and dial again after the server closes the connection.
func TestLoadConn(t *testing.T) {
	t.Parallel()
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		body, _ := io.ReadAll(r.Body)
		status, _ := strconv.Atoi(string(body))
		if r.Method != http.MethodPost || r.URL.Path != "/v1/jobs" || r.Header.Get("Content-Type") != "application/json" {
			status = http.StatusBadRequest
		}
		if status == http.StatusGone {
			w.Header().Set("Connection", "close")
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, strings.Repeat("x", status)) // answers of different lengths
	}))
	defer srv.Close()
	c := &loadConn{addr: strings.TrimPrefix(srv.URL, "http://"), path: "/v1/jobs"}
	defer c.close()
	for i, want := range []int{201, 201, 500, 201, 410, 201, 429, 410, 410, 201} {
		got, err := c.post(t.Context(), []byte(strconv.Itoa(want)))
		if err != nil || got != want {
			t.Fatalf("request %d: status %d, %v; want %d", i, got, err, want)
		}
		if closed := c.conn == nil; closed != (want == http.StatusGone) {
			t.Fatalf("request %d (%d): connection dropped = %v", i, want, closed)
		}
	}
	if n := served.Load(); n != 10 {
		t.Errorf("server saw %d requests; want 10", n)
	}
}
