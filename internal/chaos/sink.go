package chaos

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Sink log lines. Every delivery the sink receives is one S line when it
// arrives and one E line when it ends:
//
//	S <rid> <uid> <key> <seq> <attempt> <job-id> <unix-nanos>
//	E <rid> ok|fail|timeout|aborted <unix-nanos>
//
// rid numbers the deliveries of one sink process; each process writes its
// own file, so a restarted sink starts a new log. An E ok line is fsynced
// before the 2xx answer is written: a success herald saw is on disk.
const (
	resultOK      = "ok"      // answered 2xx
	resultFail    = "fail"    // answered 500 (poison key or a random failure)
	resultTimeout = "timeout" // held until herald gave up on the request
	resultAborted = "aborted" // herald went away (killed, stopped) mid-delivery
)

// Faults are the failures the sink injects; PUT /faults replaces them.
type Faults struct {
	// PoisonKey always fails. Defaults to "": none.
	PoisonKey string `json:"poison_key"`
	// SlowKey takes SlowDelay per delivery. Defaults to "": none.
	SlowKey string `json:"slow_key"`
	// SlowDelay is the slow key's delivery time. Defaults to 0.
	SlowDelay time.Duration `json:"slow_delay"`
	// FailRate is the chance that a delivery answers 500. Defaults to 0.
	FailRate float64 `json:"fail_rate"`
	// TimeoutRate is the chance that a delivery is held until herald's
	// webhook timeout cancels it. Defaults to 0.
	TimeoutRate float64 `json:"timeout_rate"`
	// TimeoutHold bounds such a hold, like a receiver's own request
	// timeout: a held delivery ends when herald hangs up or after this
	// long, whichever is first. Unbounded, a request from a node frozen
	// past its lease would stay open at the receiver while the rescued
	// retry runs, an overlap no lease can prevent without fencing at the
	// receiver. Set it a little above herald's webhook timeout.
	// Defaults to 0: no bound.
	TimeoutHold time.Duration `json:"timeout_hold"`
}

// SinkConfig configures RunSink.
type SinkConfig struct {
	// Listen is the sink's host:port. Required.
	Listen string
	// Log is the delivery log file, created or appended to. Required.
	Log string
	// Faults are the initial faults. Defaults to none.
	Faults Faults
	// Logger receives operational logs. Defaults to discarding them.
	Logger *slog.Logger
}

// Payload is the body of every job the workload enqueues.
type Payload struct {
	UID int64  `json:"uid"`
	Key string `json:"key"`
	Seq int64  `json:"seq"`
}

// Sink is the webhook receiver: it logs every delivery durably and fails
// some of them on purpose.
type Sink struct {
	log    *logWriter
	rid    atomic.Int64
	mu     sync.Mutex
	faults Faults
	rnd    *rand.Rand // guarded by mu
}

// NewSink returns a sink logging to w (usually an *os.File; see RunSink).
func NewSink(w syncWriter, f Faults) *Sink {
	return &Sink{log: newLogWriter(w), faults: f, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))} //nolint:gosec // fault injection, not security
}

// Close flushes and stops the log writer; call it after the last request.
func (s *Sink) Close() error { return s.log.close() }

func (s *Sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/faults" {
		s.serveFaults(w, r)
		return
	}
	start := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var p Payload
	if err != nil || json.Unmarshal(body, &p) != nil || p.UID == 0 {
		http.Error(w, "not a chaos payload", http.StatusBadRequest)
		return
	}
	attempt, _ := strconv.Atoi(r.Header.Get("Herald-Attempt"))
	jobID, _ := strconv.ParseInt(r.Header.Get("Herald-Job-Id"), 10, 64)
	rid := s.rid.Add(1)
	_ = s.log.add(fmt.Appendf(nil, "S %d %d %q %d %d %d %d\n", rid, p.UID, p.Key, p.Seq, attempt, jobID, start.UnixNano()), false)

	s.mu.Lock()
	f := s.faults
	roll := s.rnd.Float64()
	s.mu.Unlock()
	end := func(result string) error {
		return s.log.add(fmt.Appendf(nil, "E %d %s %d\n", rid, result, time.Now().UnixNano()), result == resultOK)
	}
	var wait time.Duration
	switch {
	case p.Key == f.PoisonKey && f.PoisonKey != "":
		_ = end(resultFail)
		http.Error(w, "poison key", http.StatusInternalServerError)
		return
	case roll < f.FailRate:
		_ = end(resultFail)
		http.Error(w, "injected failure", http.StatusInternalServerError)
		return
	case roll < f.FailRate+f.TimeoutRate:
		var limit <-chan time.Time
		if f.TimeoutHold > 0 {
			t := time.NewTimer(f.TimeoutHold - time.Since(start))
			defer t.Stop()
			limit = t.C
		}
		select {
		case <-r.Context().Done(): // herald's webhook timeout ends it
		case <-limit:
		}
		_ = end(resultTimeout)
		http.Error(w, "held past the timeout", http.StatusGatewayTimeout)
		return
	case p.Key == f.SlowKey && f.SlowKey != "":
		wait = f.SlowDelay
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			_ = end(resultAborted)
			return
		}
	}
	if r.Context().Err() != nil {
		_ = end(resultAborted)
		return
	}
	if err := end(resultOK); err != nil {
		// Not durably logged: the harness must not count it, so herald
		// must not either.
		http.Error(w, "sink log: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Sink) serveFaults(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		w.Header().Set("Allow", http.MethodPut)
		http.Error(w, "PUT a Faults object", http.StatusMethodNotAllowed)
		return
	}
	var f Faults
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&f); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// RunSink serves the sink until ctx is done, then drains running
// deliveries and flushes the log.
func RunSink(ctx context.Context, cfg SinkConfig) error {
	logger := cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler))
	if cfg.Listen == "" || cfg.Log == "" {
		return errors.New("chaos sink: listen and log are required")
	}
	f, err := os.OpenFile(cfg.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("chaos sink: %w", err)
	}
	defer f.Close() //nolint:errcheck // Sink.Close synced it
	sink := NewSink(f, cfg.Faults)
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return errors.Join(fmt.Errorf("chaos sink: %w", err), sink.Close())
	}
	srv := &http.Server{Handler: sink, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Info("chaos sink listening", "addr", ln.Addr().String(), "log", cfg.Log)
	select {
	case err = <-served:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = srv.Shutdown(sctx)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return errors.Join(err, sink.Close())
}

// syncWriter is a file: written, then synced.
type syncWriter interface {
	io.Writer
	Sync() error
}

// logWriter appends lines with group commit: one write and one fsync for
// every line queued while the previous fsync ran.
type logWriter struct {
	w       syncWriter
	mu      sync.Mutex
	buf     []byte
	waiters []chan error
	closed  bool
	kick    chan struct{}
	done    chan struct{}
}

func newLogWriter(w syncWriter) *logWriter {
	l := &logWriter{w: w, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go l.run()
	return l
}

// add queues line; with wait it returns once the line is fsynced.
func (l *logWriter) add(line []byte, wait bool) error {
	var ch chan error
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("log closed")
	}
	l.buf = append(l.buf, line...)
	if wait {
		ch = make(chan error, 1)
		l.waiters = append(l.waiters, ch)
	}
	// Under mu, so close cannot close kick between the check and the send.
	select {
	case l.kick <- struct{}{}:
	default: // a flush is already due; it takes this line too
	}
	l.mu.Unlock()
	if ch == nil {
		return nil
	}
	return <-ch
}

func (l *logWriter) run() {
	defer close(l.done)
	var spare []byte
	for range l.kick {
		l.mu.Lock()
		buf, ws := l.buf, l.waiters
		l.buf, l.waiters = spare[:0], nil
		l.mu.Unlock()
		var err error
		if len(buf) > 0 {
			if _, err = l.w.Write(buf); err == nil {
				err = l.w.Sync()
			}
		}
		for _, ch := range ws {
			ch <- err
		}
		spare = buf
	}
}

// close flushes what is queued and stops the writer.
func (l *logWriter) close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.kick)
	l.mu.Unlock()
	<-l.done
	// run drained every kick, so nothing is left; flush defensively.
	var err error
	if len(l.buf) > 0 {
		if _, err = l.w.Write(l.buf); err == nil {
			err = l.w.Sync()
		}
	}
	for _, ch := range l.waiters {
		ch <- err
	}
	return err
}
