package chaos

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald/internal/history"
)

func deliver(t *testing.T, url string, p Payload, attempt string) int {
	t.Helper()
	b, _ := json.Marshal(p)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Herald-Attempt", attempt)
	req.Header.Set("Herald-Job-Id", "77")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// The sink answers by its faults and logs each delivery so that
// readSinkLog gives back what happened.
func TestSinkLogsDeliveries(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sink.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	sink := NewSink(f, Faults{PoisonKey: "p", SlowKey: "s", SlowDelay: 30 * time.Millisecond})
	srv := httptest.NewServer(sink)
	tests := []struct {
		p       Payload
		status  int
		outcome history.Outcome
	}{
		{Payload{UID: 1, Key: "k", Seq: 1}, http.StatusNoContent, history.Succeeded},
		{Payload{UID: 2, Key: "p", Seq: 1}, http.StatusInternalServerError, history.Failed},
		{Payload{UID: 3, Key: "s", Seq: 1}, http.StatusNoContent, history.Succeeded},
	}
	for _, tt := range tests {
		if got := deliver(t, srv.URL+"/deliver", tt.p, "2"); got != tt.status {
			t.Errorf("uid %d: status %d, want %d", tt.p.UID, got, tt.status)
		}
	}
	srv.Close()
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ds, err := readSinkLog(sinkLog{path: path})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != len(tests) {
		t.Fatalf("%d deliveries logged, want %d", len(ds), len(tests))
	}
	for i, tt := range tests {
		d := ds[i]
		if d.ID != tt.p.UID || d.Key != tt.p.Key || d.Seq != tt.p.Seq || d.Attempt != 2 || d.jobID != 77 || d.Outcome != tt.outcome || d.End.Before(d.Start) {
			t.Errorf("delivery %d = %+v, want uid %d key %q outcome %s", i, d, tt.p.UID, tt.p.Key, tt.outcome)
		}
	}
	if slow := ds[2]; slow.End.Sub(slow.Start) < 30*time.Millisecond {
		t.Errorf("slow key took %s, want at least its 30ms delay", slow.End.Sub(slow.Start))
	}
}

// A delivery cut off by a sink kill holds its key until the kill; a torn
// last line is dropped; garbage elsewhere is an error.
func TestReadSinkLog(t *testing.T) {
	t.Parallel()
	killed := time.Unix(0, 5000)
	tests := []struct {
		name    string
		log     string
		want    []history.Record
		wantErr string
	}{
		{
			name: "finished and cut off",
			log:  "S 1 10 \"a\" 1 1 100 1000\nS 2 11 \"a\" 2 1 101 2000\nE 1 ok 1500\n",
			want: []history.Record{
				{ID: 10, Key: "a", Seq: 1, Attempt: 1, Start: time.Unix(0, 1000), End: time.Unix(0, 1500), Outcome: history.Succeeded},
				{ID: 11, Key: "a", Seq: 2, Attempt: 1, Start: time.Unix(0, 2000), CrashedAt: killed},
			},
		},
		{
			name: "torn last line",
			log:  "S 1 10 \"a\" 1 1 100 1000\nE 1 fail 1500\nS 2 11 \"a\"",
			want: []history.Record{{ID: 10, Key: "a", Seq: 1, Attempt: 1, Start: time.Unix(0, 1000), End: time.Unix(0, 1500), Outcome: history.Failed}},
		},
		{name: "end without start", log: "E 9 ok 1\n", wantErr: "bad E line"},
		{name: "unknown result", log: "S 1 10 \"a\" 1 1 100 1000\nE 1 maybe 2\n", wantErr: "unknown result"},
		{name: "torn line in the middle", log: "S 1 10\nS 2 11 \"a\" 2 1 101 2000\n", wantErr: "want 8 fields"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "sink.log")
			if err := os.WriteFile(path, []byte(tt.log), 0o600); err != nil {
				t.Fatal(err)
			}
			ds, err := readSinkLog(sinkLog{path: path, killed: killed})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) != len(tt.want) {
				t.Fatalf("got %d records, want %d", len(ds), len(tt.want))
			}
			for i, w := range tt.want {
				if g := ds[i].Record; !g.Start.Equal(w.Start) || !g.End.Equal(w.End) || !g.CrashedAt.Equal(w.CrashedAt) ||
					g.ID != w.ID || g.Key != w.Key || g.Seq != w.Seq || g.Outcome != w.Outcome {
					t.Errorf("record %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

// PUT /faults changes the sink's behavior at once.
func TestSinkFaultsEndpoint(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "sink.log"))
	if err != nil {
		t.Fatal(err)
	}
	sink := NewSink(f, Faults{})
	srv := httptest.NewServer(sink)
	defer func() {
		srv.Close()
		_ = sink.Close()
		_ = f.Close()
	}()
	if got := deliver(t, srv.URL, Payload{UID: 1, Key: "x", Seq: 1}, "1"); got != http.StatusNoContent {
		t.Fatalf("before: %d", got)
	}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPut, srv.URL+"/faults", strings.NewReader(`{"fail_rate":0.49,"timeout_rate":0,"poison_key":"x"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PUT /faults: %s", resp.Status)
	}
	if got := deliver(t, srv.URL, Payload{UID: 2, Key: "x", Seq: 2}, "1"); got != http.StatusInternalServerError {
		t.Errorf("poison after PUT: %d, want 500", got)
	}
}
