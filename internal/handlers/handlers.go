// Package handlers holds herald's built-in job kinds, configured by type in
// the service's YAML: noop, sleep and webhook. Each returns a
// herald.HandlerFunc; the engine supplies retries, timeouts and order.
package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/heraldmq/herald"
)

// Noop completes every job at once. Useful for benchmarks and smoke tests.
func Noop() herald.HandlerFunc {
	return func(context.Context, *herald.Job) error { return nil }
}

// MaxSleep caps a sleep job, so a typo cannot park a worker for a day.
const MaxSleep = time.Hour

// Sleep waits for the payload's {"ms": N} milliseconds (0 when absent), or
// until the job's context ends. A payload that is not such an object is a
// permanent failure.
func Sleep() herald.HandlerFunc {
	return func(ctx context.Context, job *herald.Job) error {
		var p struct {
			MS *int64 `json:"ms"`
		}
		if len(job.Payload) > 0 && string(job.Payload) != "null" {
			if err := json.Unmarshal(job.Payload, &p); err != nil {
				return herald.Permanent(fmt.Errorf("sleep: payload must be {\"ms\": N}: %w", err))
			}
		}
		var d time.Duration
		if p.MS != nil {
			if *p.MS < 0 || time.Duration(*p.MS)*time.Millisecond > MaxSleep {
				return herald.Permanent(fmt.Errorf("sleep: ms must be between 0 and %d", MaxSleep.Milliseconds()))
			}
			d = time.Duration(*p.MS) * time.Millisecond
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// RateLimited lets h start at most r jobs per second (bursts of burst).
// The wait happens inside the job's worker slot and honors its context.
func RateLimited(h herald.HandlerFunc, r float64, burst int) herald.HandlerFunc {
	if r <= 0 {
		return h
	}
	lim := rate.NewLimiter(rate.Limit(r), max(burst, 1))
	return func(ctx context.Context, job *herald.Job) error {
		if err := lim.Wait(ctx); err != nil {
			return fmt.Errorf("rate limit: %w", err)
		}
		return h(ctx, job)
	}
}
