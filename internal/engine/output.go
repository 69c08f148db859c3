package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// MaxOutput caps a recorded output, so one handler cannot bloat the store.
const MaxOutput = 256 << 10

// ErrNoAttempt means RecordOutput was called outside a running attempt.
var ErrNoAttempt = errors.New("engine: context does not belong to a running attempt")

type outputKey struct{}

// outputRecorder holds what the running attempt recorded; the store loop
// writes it with the attempt's outcome.
type outputRecorder struct {
	mu  sync.Mutex
	out json.RawMessage
}

func (r *outputRecorder) get() json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out
}

// RecordOutput stores raw (valid JSON) as the running job's output,
// replacing what an earlier call or attempt recorded. It is written together
// with the attempt's outcome, so the next attempt sees it in Job.Output.
func RecordOutput(ctx context.Context, raw json.RawMessage) error {
	r, ok := ctx.Value(outputKey{}).(*outputRecorder)
	if !ok {
		return ErrNoAttempt
	}
	if len(raw) > MaxOutput {
		return fmt.Errorf("engine: output of %d bytes exceeds the %d-byte limit", len(raw), MaxOutput)
	}
	if !json.Valid(raw) {
		return errors.New("engine: output is not valid JSON")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out = append(json.RawMessage(nil), raw...)
	return nil
}
