package engine

import (
	"fmt"
	"time"
)

// PermanentError marks a failure that retrying cannot fix: the job is
// discarded at once.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// RetryAfterError asks for the next attempt after Delay (e.g. the remote
// side rate-limited us). It still counts as a failed attempt.
type RetryAfterError struct {
	Delay time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("retry after %s: %v", e.Delay, e.Err)
}
func (e *RetryAfterError) Unwrap() error { return e.Err }
