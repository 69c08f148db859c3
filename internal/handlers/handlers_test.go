package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldmq/herald"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func job(payload string) *herald.Job {
	return &herald.Job{ID: 42, Kind: "hook", Key: "acct-7", Attempt: 2, Payload: json.RawMessage(payload)}
}

func TestWebhookOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		status        int
		retryAfter    string
		wantErr       bool
		wantPermanent bool
		wantDelay     time.Duration // > 0: a RetryAfterError with this delay
	}{
		{"OK", 200, "", false, false, 0},
		{"NoContent", 204, "", false, false, 0},
		{"ServerError", 500, "", true, false, 0},
		{"Unavailable with Retry-After seconds", 503, "7", true, false, 7 * time.Second},
		{"TooManyRequests", 429, "2", true, false, 2 * time.Second},
		{"RequestTimeout", 408, "", true, false, 0},
		{"NotFound", 404, "", true, true, 0},
		{"BadRequest", 400, "", true, true, 0},
		{"Redirect is not followed", 302, "", true, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				if tt.status == 302 {
					w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, "receiver says hi") //nolint:errcheck // test server
			}))
			t.Cleanup(srv.Close)
			h, err := Webhook(WebhookConfig{URL: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			err = h(t.Context(), job(`{"a":1}`))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			var perm *herald.PermanentError
			if errors.As(err, &perm) != tt.wantPermanent {
				t.Errorf("permanent = %v, want %v (err %v)", !tt.wantPermanent, tt.wantPermanent, err)
			}
			var ra *herald.RetryAfterError
			if tt.wantDelay > 0 && (!errors.As(err, &ra) || ra.Delay != tt.wantDelay) {
				t.Errorf("err = %v, want RetryAfter %s", err, tt.wantDelay)
			}
			if err != nil && !strings.Contains(err.Error(), "receiver says hi") {
				t.Errorf("error %q does not quote the receiver's answer", err)
			}
		})
	}
}

func TestWebhookRequestAndSignature(t *testing.T) {
	t.Parallel()
	var got atomic.Pointer[http.Request]
	var gotBody atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotBody.Store(b)
		got.Store(r.Clone(context.Background()))
	}))
	t.Cleanup(srv.Close)
	h, err := Webhook(WebhookConfig{URL: srv.URL + "/hook", Secret: "s3cret", Headers: map[string]string{"X-Api-Key": "abc"}})
	if err != nil {
		t.Fatal(err)
	}
	payload := `{"account_id": 7, "type": "renewed"}`
	if err := h(t.Context(), job(payload)); err != nil {
		t.Fatal(err)
	}
	r := got.Load()
	body := gotBody.Load().([]byte)
	if string(body) != payload {
		t.Errorf("body = %q, want the payload verbatim %q", body, payload)
	}
	for header, want := range map[string]string{
		"Content-Type": "application/json", "X-Api-Key": "abc",
		HeaderJobID: "42", HeaderKind: "hook", HeaderKey: "acct-7", HeaderAttempt: "2",
	} {
		if v := r.Header.Get(header); v != want {
			t.Errorf("header %s = %q, want %q", header, v, want)
		}
	}
	ts, sig := r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature)
	if err := Verify("s3cret", ts, sig, body, time.Now(), time.Minute); err != nil {
		t.Errorf("receiver-side Verify: %v", err)
	}
	if err := Verify("wrong", ts, sig, body, time.Now(), time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify with the wrong secret = %v", err)
	}
	if err := Verify("s3cret", ts, sig, []byte(`{"tampered":1}`), time.Now(), time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify of a tampered body = %v", err)
	}
	if err := Verify("s3cret", ts, sig, body, time.Now().Add(10*time.Minute), time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify of a stale delivery = %v", err)
	}
}

func TestSignKnownVector(t *testing.T) {
	t.Parallel()
	// Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
	const want = "v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
	if got := Sign("key", "1700000000", []byte(`{"a":1}`)); got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
}

func TestWebhookNetworkErrorIsRetried(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	h, err := Webhook(WebhookConfig{URL: url, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = h(t.Context(), job(`{}`))
	var perm *herald.PermanentError
	if err == nil || errors.As(err, &perm) {
		t.Errorf("err = %v, want a retryable error", err)
	}
}

func TestWebhookTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	h, err := Webhook(WebhookConfig{URL: srv.URL, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := h(t.Context(), job(`{}`)); err == nil {
		t.Fatal("a receiver that never answers did not fail the attempt")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("attempt took %s, want about the 50ms timeout", d)
	}
}

func TestWebhookConfigErrors(t *testing.T) {
	t.Parallel()
	for _, cfg := range []WebhookConfig{
		{URL: ""},
		{URL: "ftp://example.invalid/x"},
		{URL: "/relative"},
		{URL: "http://127.0.0.1/x", Headers: map[string]string{"X-A": "v\r\nInjected: 1"}},
		{URL: "http://127.0.0.1/x", Headers: map[string]string{"X-A\nB": "v"}},
	} {
		if _, err := Webhook(cfg); err == nil {
			t.Errorf("Webhook(%+v) accepted", cfg)
		}
	}
}

func TestRetryAfterParsing(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"120", 2 * time.Minute, true},
		{"-5", 0, false},
		{"soon", 0, false},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
	}
	for _, tt := range tests {
		got, ok := retryAfter(tt.v, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("retryAfter(%q) = %s, %v; want %s, %v", tt.v, got, ok, tt.want, tt.ok)
		}
	}
}

func TestSleep(t *testing.T) {
	t.Parallel()
	h := Sleep()
	tests := []struct {
		payload       string
		wantErr       bool
		wantPermanent bool
	}{
		{`{"ms": 1}`, false, false},
		{`{}`, false, false},
		{`null`, false, false},
		{`{"ms": -1}`, true, true},
		{`{"ms": 99999999999}`, true, true},
		{`[1,2]`, true, true},
		{`{"ms": "5"}`, true, true},
	}
	for _, tt := range tests {
		err := h(t.Context(), job(tt.payload))
		var perm *herald.PermanentError
		if (err != nil) != tt.wantErr || errors.As(err, &perm) != tt.wantPermanent {
			t.Errorf("sleep %s: err = %v", tt.payload, err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := h(ctx, job(`{"ms": 60000}`)); !errors.Is(err, context.Canceled) {
		t.Errorf("sleep with a cancelled context = %v", err)
	}
	if err := Noop()(t.Context(), job(`{}`)); err != nil {
		t.Errorf("noop = %v", err)
	}
}

func TestRateLimited(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	h := RateLimited(func(context.Context, *herald.Job) error { n.Add(1); return nil }, 20, 1)
	start := time.Now()
	for range 5 {
		if err := h(t.Context(), job(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	// 5 starts at 20/s with a burst of 1 need at least 4 intervals of 50ms.
	if d := time.Since(start); d < 180*time.Millisecond {
		t.Errorf("5 jobs at 20/s took %s", d)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	slow := RateLimited(Noop(), 0.001, 1)
	_ = slow(t.Context(), job(`{}`)) // uses the burst
	if err := slow(ctx, job(`{}`)); err == nil {
		t.Error("a cancelled wait for the rate limit did not fail")
	}
	if n.Load() != 5 {
		t.Errorf("handler ran %d times, want 5", n.Load())
	}
}
