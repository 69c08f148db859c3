package handlers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/heraldmq/herald"
)

// Webhook delivery headers. A receiver verifies a delivery by recomputing
// the signature: see Sign and docs/webhooks.md.
const (
	HeaderJobID     = "Herald-Job-Id"
	HeaderKind      = "Herald-Kind"
	HeaderKey       = "Herald-Key"
	HeaderAttempt   = "Herald-Attempt"
	HeaderTimestamp = "Herald-Timestamp"
	HeaderSignature = "Herald-Signature"
)

// WebhookConfig configures a webhook kind.
type WebhookConfig struct {
	// URL receives the job's payload. Required; absolute http or https.
	URL string
	// Method defaults to POST.
	Method string
	// Headers are added to every request (e.g. an API key of the receiver).
	Headers map[string]string
	// Secret signs each request with HMAC-SHA256; empty means unsigned.
	Secret string
	// Timeout bounds one request. Defaults to 10s.
	Timeout time.Duration
	// Client sends the requests. Defaults to a client with Timeout and no
	// redirects (a redirect would resend the payload somewhere unreviewed).
	Client *http.Client
}

// Webhook returns a handler that delivers each job's payload to cfg.URL.
//
// Outcomes: 2xx completes the job. 408, 429, 5xx and network errors are
// retried with backoff, honoring Retry-After. Any other status is a
// permanent failure (dead letter), because resending the same request would
// get the same answer.
func Webhook(cfg WebhookConfig) (herald.HandlerFunc, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook: url %q must be an absolute http or https URL", cfg.URL)
	}
	method := cfg.Method
	if method == "" {
		method = http.MethodPost
	}
	for name, value := range cfg.Headers {
		if strings.ContainsAny(name+value, "\r\n") {
			return nil, fmt.Errorf("webhook: header %q contains a line break", name)
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{
			Timeout:       timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return func(ctx context.Context, job *herald.Job) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		body := []byte(job.Payload)
		req, err := http.NewRequestWithContext(ctx, method, cfg.URL, bytes.NewReader(body))
		if err != nil {
			return herald.Permanent(fmt.Errorf("webhook: build request: %w", err))
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "herald")
		for name, value := range cfg.Headers {
			req.Header.Set(name, value)
		}
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req.Header.Set(HeaderJobID, strconv.FormatInt(job.ID, 10))
		req.Header.Set(HeaderKind, job.Kind)
		if job.Key != "" {
			req.Header.Set(HeaderKey, job.Key)
		}
		req.Header.Set(HeaderAttempt, strconv.Itoa(job.Attempt))
		req.Header.Set(HeaderTimestamp, ts)
		if cfg.Secret != "" {
			req.Header.Set(HeaderSignature, Sign(cfg.Secret, ts, body))
		}
		// Last check before the receiver sees anything: a process that
		// stalled past the lease must not deliver a job that another node
		// may already have delivered, followed by its key's next ones.
		if !herald.LeaseHeld(ctx) {
			return errors.New("webhook: not sent: the job's lease ended (this process stalled)")
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("webhook: %w", err) // network trouble: retry
		}
		defer resp.Body.Close() //nolint:errcheck // the body is drained; a close error changes nothing
		// Read a little for the error history; drain a bounded amount so the
		// connection can be reused.
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return outcome(resp, snippet)
	}, nil
}

func outcome(resp *http.Response, snippet []byte) error {
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return nil
	}
	err := fmt.Errorf("webhook: receiver answered %s: %q", resp.Status, snippet)
	switch {
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return herald.RetryAfter(d, err)
		}
		return err
	default:
		return herald.Permanent(err)
	}
}

// retryAfter parses a Retry-After header: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// Sign returns the Herald-Signature value for a delivery: "v1=" and the hex
// HMAC-SHA256, keyed by secret, of the timestamp header, a dot, and the raw
// body. Receivers recompute it, compare in constant time, and reject stale
// timestamps to stop replays.
func Sign(secret, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(timestamp))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

// ErrBadSignature is returned by Verify.
var ErrBadSignature = errors.New("webhook: bad or stale signature")

// Verify checks a delivery's signature and that its timestamp is within
// tolerance of now. Receivers written in Go can call it directly.
func Verify(secret, timestamp, signature string, body []byte, now time.Time, tolerance time.Duration) error {
	secs, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(secs, 0)); d > tolerance || d < -tolerance {
		return ErrBadSignature
	}
	if !hmac.Equal([]byte(Sign(secret, timestamp, body)), []byte(signature)) {
		return ErrBadSignature
	}
	return nil
}
