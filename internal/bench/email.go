package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/email"
	"github.com/heraldmq/herald/internal/handlers"
	"github.com/heraldmq/herald/internal/smtptest"
)

// EmailResult is `herald bench email`'s JSON line.
type EmailResult struct {
	Scenario string  `json:"scenario"`
	Messages int     `json:"messages"`
	Conns    int     `json:"conns"`
	SentPerS float64 `json:"sent_per_s"`
	Failed   int64   `json:"failed"`
	// SMTP is the sink's address, or "in-process go-smtp".
	SMTP string `json:"smtp"`
	// EnqueuePerS is the durable enqueue rate alone.
	EnqueuePerS float64 `json:"enqueue_per_s"`
	// Dials is how many SMTP connections herald opened.
	Dials int64 `json:"dials"`
	// CPUMicrosPerMsg is this process's user+system CPU time per message
	// (it includes the in-process sink when there is no --smtp).
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
	// LoadAvg is /proc/loadavg (1, 5, 15 minutes) at the end of the run.
	LoadAvg string `json:"load_avg"`
	// SMTPSourcePerS is postfix smtp-source's raw rate on the same sink with
	// as many reused connections, measured just before herald's run; 0 when
	// smtp-source was not run.
	SMTPSourcePerS float64 `json:"smtp_source_per_s,omitempty"`
	// Ratio is SentPerS / SMTPSourcePerS.
	Ratio float64 `json:"ratio,omitempty"`
}

// Err fails the run when a message was not delivered.
func (r EmailResult) Err() error {
	if r.Failed > 0 {
		return errors.New("some messages failed")
	}
	return nil
}

// Email measures durable enqueue → delivered over SMTP: messages email jobs,
// each to its own recipient (so its own key), are enqueued in batches while
// the engine sends them over a pool of conns persistent connections to
// smtpAddr, or to an in-process go-smtp sink when smtpAddr is empty.
// sent_per_s is messages over the time from the first enqueue to the last
// server acceptance.
//
// smtpSource, if not empty, is the smtp-source binary to measure the sink's
// raw rate with first (same messages, same number of reused connections),
// so both figures come from one run on one sink.
func Email(ctx context.Context, o Options, smtpAddr string, messages, conns int, smtpSource string) (EmailResult, error) {
	res := EmailResult{Scenario: "email", Messages: messages, Conns: conns, SMTP: smtpAddr}
	if messages <= 0 || conns <= 0 {
		return res, fmt.Errorf("%w: messages and conns must be positive", ErrBadInput)
	}
	if smtpAddr == "" {
		sink, err := smtptest.Start(smtptest.Options{Discard: true})
		if err != nil {
			return res, err
		}
		defer func() { _ = sink.Close() }()
		smtpAddr, res.SMTP = sink.Addr(), "in-process go-smtp"
	}
	if smtpSource != "" {
		d, err := runSMTPSource(ctx, smtpSource, smtpAddr, messages, conns)
		if err != nil {
			return res, err
		}
		res.SMTPSourcePerS = float64(messages) / d.Seconds()
		o.printf("smtp-source: %d messages in %s (%.0f/s)", messages, d.Round(time.Millisecond), res.SMTPSourcePerS)
	}
	sender, err := email.NewSender(email.Config{Servers: []email.ServerConfig{{
		Addr: smtpAddr, TLS: email.TLSNone, PoolSize: conns, Timeout: 30 * time.Second,
	}}})
	if err != nil {
		return res, err
	}
	defer func() { _ = sender.Close() }()
	h, err := handlers.Email(handlers.EmailConfig{Sender: sender, From: "Herald Bench <bench@herald.example>"})
	if err != nil {
		return res, err
	}
	var done, failed, last atomic.Int64
	// Many more workers than connections: jobs queue for a connection
	// inside their attempt, and more jobs finishing together make larger
	// group commits (measured: 390 µs CPU per message with 2×conns workers,
	// 255 µs with 1000).
	c, stop, err := o.client(ctx, cmp.Or(o.Workers, 1000), func(ctx context.Context, j *herald.Job) error {
		err := h(ctx, j)
		if err != nil {
			failed.Add(1)
			return err
		}
		last.Store(time.Now().UnixNano())
		done.Add(1)
		return nil
	})
	if err != nil {
		return res, err
	}
	defer stop()

	cpu0 := cpuTime()
	start := time.Now()
	enq, err := enqueueEmails(ctx, c, messages, 1000, 4)
	if err != nil {
		return res, err
	}
	res.EnqueuePerS = float64(messages) / enq.Seconds()
	o.printf("enqueued %d messages in %s (%.0f/s)", messages, enq.Round(time.Millisecond), res.EnqueuePerS)
	if err := waitFor(ctx, 30*time.Minute, func() bool { return done.Load() >= int64(messages) }); err != nil {
		return res, err
	}
	total := time.Unix(0, last.Load()).Sub(start)
	res.SentPerS = float64(messages) / total.Seconds()
	res.CPUMicrosPerMsg = float64((cpuTime() - cpu0).Microseconds()) / float64(messages)
	res.Failed = failed.Load()
	res.Dials = sender.Dials()
	res.LoadAvg = loadAvg()
	if res.SMTPSourcePerS > 0 {
		res.Ratio = res.SentPerS / res.SMTPSourcePerS
	}
	o.printf("sent %d messages in %s end to end (%.0f/s) over %d connections, %.0f µs CPU/message, load %s",
		messages, total.Round(time.Millisecond), res.SentPerS, res.Dials, res.CPUMicrosPerMsg, res.LoadAvg)
	return res, nil
}

// runSMTPSource runs postfix's load generator against addr: messages
// messages of ~300 bytes over conns sessions that keep their connection
// (-d), as herald's pool does.
func runSMTPSource(ctx context.Context, bin, addr string, messages, conns int) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, bin, "-d", "-s", strconv.Itoa(conns), "-m", strconv.Itoa(messages), "-l", "300", //nolint:gosec // the operator's own flag
		"-f", "bench@herald.example", "-t", "user@bench.example", addr)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("smtp-source: %w: %s", err, out)
	}
	return time.Since(start), nil
}

func enqueueEmails(ctx context.Context, c *herald.Client, n, batch, producers int) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			buf := make([]herald.EnqueueParams, 0, batch)
			for i := p; i < n; i += producers {
				to := "user" + strconv.Itoa(i) + "@bench.example"
				payload := `{"to":["` + to + `"],"subject":"Your subscription is expiring","text":"user` +
					strconv.Itoa(i) + `, your subscription is expiring soon"}`
				buf = append(buf, herald.EnqueueParams{Kind: "bench", Key: to, Payload: json.RawMessage(payload)})
				if len(buf) == batch || i+producers >= n {
					if _, err := c.EnqueueMany(ctx, buf); err != nil {
						errs <- err
						return
					}
					buf = buf[:0]
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
