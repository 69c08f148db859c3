package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/email"
)

// EmailConfig configures an email kind.
type EmailConfig struct {
	// Sender delivers the messages. Required; the caller closes it.
	Sender *email.Sender
	// From is the sender of messages whose payload has no from. Defaults
	// to "": the payload must name one.
	From string
	// Templates are the kind's named templates. Defaults to none.
	Templates *email.Templates
	// Hostname is the right-hand side of Message-IDs
	// (<herald.JOBID@Hostname>). Defaults to the domain of From, else the
	// machine's host name.
	Hostname string
	// MaxRecipients caps To+Cc+Bcc of one message. Defaults to 1000.
	MaxRecipients int
	// Logger receives one Debug line per delivery (job id, counts; no
	// addresses or contents). Defaults to discarding.
	Logger *slog.Logger
	// Now is the clock for Date headers. Defaults to time.Now.
	Now func() time.Time
}

func (c EmailConfig) withDefaults() EmailConfig {
	if c.Hostname == "" {
		if a, err := mail.ParseAddress(c.From); err == nil {
			_, c.Hostname, _ = strings.Cut(a.Address, "@")
		}
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c EmailConfig) rules() email.Rules {
	maxBytes := 0
	if c.Sender != nil {
		maxBytes = c.Sender.MaxMessageBytes()
	}
	return email.Rules{DefaultFrom: c.From, Templates: c.Templates, MaxBytes: maxBytes, MaxRecipients: c.MaxRecipients}
}

// EmailOutput is what an email job records (herald.RecordOutput) after each
// attempt, and what the next attempt reads back from Job.Output: recipients
// already sent or refused are not sent again.
type EmailOutput struct {
	MessageID  string                  `json:"message_id"`
	Recipients []email.RecipientResult `json:"recipients"`
}

// MessageID is the stable Message-ID of a job's message, without angle
// brackets: every attempt sends the same one, so a receiver (or a human)
// can recognize a duplicate sent in the at-least-once window.
func MessageID(jobID int64, host string) string {
	return "herald." + strconv.FormatInt(jobID, 10) + "@" + host
}

// PrepareEmail checks an email job before it is enqueued and gives it its
// default key: the first recipient, so one recipient's messages go out in
// order. Payload problems are *herald.FieldError naming "payload.<field>".
func PrepareEmail(cfg EmailConfig) func(p *herald.EnqueueParams) error {
	rules := cfg.rules()
	return func(p *herald.EnqueueParams) error {
		raw, err := payloadBytes(p.Payload)
		if err != nil {
			return &herald.FieldError{Field: "payload", Message: err.Error()}
		}
		m, err := email.Decode(raw)
		if err == nil {
			err = m.Validate(rules)
		}
		if err != nil {
			if fe, ok := errors.AsType[*email.FieldError](err); ok {
				field := "payload"
				if fe.Field != "payload" {
					field = "payload." + fe.Field
				}
				return &herald.FieldError{Field: field, Message: fe.Message}
			}
			return &herald.FieldError{Field: "payload", Message: err.Error()}
		}
		if p.Key == "" {
			p.Key = m.FirstRecipient()
		}
		return nil
	}
}

func payloadBytes(v any) ([]byte, error) {
	switch p := v.(type) {
	case json.RawMessage:
		return p, nil
	case []byte:
		return p, nil
	case nil:
		return nil, errors.New("an email message object is required")
	default:
		return json.Marshal(v)
	}
}

// Email returns the handler of an email kind: it renders the job's message,
// sends it to the recipients not yet done, and records each recipient's
// reply.
//
// Outcomes: every recipient sent (or some sent, the rest refused) completes
// the job. 4xx replies, throttling and network errors retry with backoff
// (after the pause, when throttled); only the deferred recipients are sent
// again. 5xx to MAIL or DATA, every recipient refused, an invalid payload
// or an oversized message fail permanently, with the reply recorded.
func Email(cfg EmailConfig) (herald.HandlerFunc, error) {
	if cfg.Sender == nil {
		return nil, errors.New("email: a sender is required")
	}
	cfg = cfg.withDefaults()
	rules := cfg.rules()
	return func(ctx context.Context, job *herald.Job) error {
		m, err := email.Decode(job.Payload)
		if err == nil {
			err = m.Validate(rules)
		}
		if err != nil {
			return herald.Permanent(fmt.Errorf("email: %w", err))
		}
		if m, err = m.Render(rules); err != nil {
			return herald.Permanent(fmt.Errorf("email: %w", err))
		}
		out := EmailOutput{MessageID: "<" + MessageID(job.ID, cfg.Hostname) + ">"}
		done := map[string]email.RecipientResult{}
		if len(job.Output) > 0 {
			var prev EmailOutput
			if json.Unmarshal(job.Output, &prev) == nil {
				for _, r := range prev.Recipients {
					done[strings.ToLower(r.Address)] = r
				}
			}
		}
		var todo []string
		for _, to := range m.Recipients() {
			if r, ok := done[strings.ToLower(to)]; ok && (r.Status == email.StatusSent || r.Status == email.StatusRefused) {
				out.Recipients = append(out.Recipients, r)
				continue
			}
			todo = append(todo, to)
		}
		if len(todo) == 0 {
			return finish(out, cfg.Sender, cfg.Now())
		}
		data, err := email.Build(m, MessageID(job.ID, cfg.Hostname), cfg.Now())
		if err != nil {
			return herald.Permanent(err)
		}
		from, err := mail.ParseAddress(m.From)
		if err != nil {
			return herald.Permanent(fmt.Errorf("email: from: %w", err))
		}
		// The lease is checked once a connection is ready, just before the
		// server sees anything: a process that stalled past the lease must
		// not send a message another node may already have sent.
		results, sendErr := cfg.Sender.Send(ctx, email.Envelope{
			From: from.Address, To: todo, Proceed: func() bool { return herald.LeaseHeld(ctx) },
		}, data)
		out.Recipients = append(out.Recipients, results...)
		if results == nil {
			for _, to := range todo {
				out.Recipients = append(out.Recipients, email.RecipientResult{Address: to, Status: email.StatusDeferred})
			}
		}
		if re, ok := errors.AsType[*email.ReplyError](sendErr); ok {
			// A reply to the whole transaction (MAIL or DATA) is every
			// waiting recipient's answer: refused on 5xx, deferred on 4xx.
			for i, r := range out.Recipients {
				if r.Status == email.StatusDeferred && slices.Contains(todo, r.Address) {
					reply := re.Reply
					out.Recipients[i].Reply, out.Recipients[i].Server = &reply, re.Server
					if !re.Temporary() {
						out.Recipients[i].Status = email.StatusRefused
					}
				}
			}
		}
		record(ctx, cfg.Logger, job.ID, out)
		cfg.Logger.LogAttrs(ctx, slog.LevelDebug, "email attempt", slog.Int64("job", job.ID),
			slog.Int("recipients", len(todo)), slog.Bool("ok", sendErr == nil))
		if sendErr != nil {
			return classify(sendErr, cfg.Now())
		}
		return finish(out, cfg.Sender, cfg.Now())
	}, nil
}

// maxReplyText bounds a recorded reply text: servers may send long
// multi-line replies, and the record of a large message holds one per
// recipient.
const maxReplyText = 200

// record stores out as the job's output. If it is over the output limit
// (a message to a thousand recipients), a compact form without servers,
// times and reply texts is stored instead: losing the record would send
// the message again to everyone on retry.
func record(ctx context.Context, log *slog.Logger, jobID int64, out EmailOutput) {
	for i, r := range out.Recipients {
		if r.Reply != nil && len(r.Reply.Message) > maxReplyText {
			reply := *r.Reply
			reply.Message = reply.Message[:maxReplyText]
			out.Recipients[i].Reply = &reply
		}
	}
	err := herald.RecordOutput(ctx, out)
	if err == nil || errors.Is(err, herald.ErrNoAttempt) {
		return
	}
	compact := EmailOutput{MessageID: out.MessageID, Recipients: make([]email.RecipientResult, len(out.Recipients))}
	for i, r := range out.Recipients {
		compact.Recipients[i] = email.RecipientResult{Address: r.Address, Status: r.Status}
		if r.Reply != nil {
			compact.Recipients[i].Reply = &email.Reply{Code: r.Reply.Code, Enhanced: r.Reply.Enhanced}
		}
	}
	if err := herald.RecordOutput(ctx, compact); err != nil {
		log.LogAttrs(ctx, slog.LevelWarn, "email: cannot record the recipients' outcome; a retry may resend",
			slog.Int64("job", jobID), slog.String("error", err.Error()))
	}
}

// finish decides a completed transaction's outcome from the recipients.
// Deferred recipients retry; when their domain is paused after a
// throttling reply, not before the pause ends.
func finish(out EmailOutput, sender *email.Sender, now time.Time) error {
	var sent, refused, deferred int
	var lastRefusal string
	var until time.Time
	for _, r := range out.Recipients {
		switch r.Status {
		case email.StatusSent:
			sent++
		case email.StatusRefused:
			refused++
			if r.Reply != nil {
				lastRefusal = r.Reply.String()
			}
		default:
			deferred++
			if u := sender.DomainPausedUntil(r.Address); u.After(until) {
				until = u
			}
		}
	}
	switch {
	case deferred > 0:
		err := fmt.Errorf("email: %d of %d recipients deferred", deferred, len(out.Recipients))
		if until.After(now) {
			return herald.RetryAfter(until.Sub(now), err)
		}
		return err
	case sent == 0 && refused > 0:
		return herald.Permanent(fmt.Errorf("email: every recipient refused (last: %s)", lastRefusal))
	}
	return nil
}

// classify maps a failed transaction to herald's retry semantics.
func classify(err error, now time.Time) error {
	if te, ok := errors.AsType[*email.ThrottledError](err); ok {
		return herald.RetryAfter(max(te.Until.Sub(now), time.Second), err)
	}
	if re, ok := errors.AsType[*email.ReplyError](err); ok && !re.Temporary() {
		return herald.Permanent(err)
	}
	if errors.Is(err, email.ErrTooLarge) {
		return herald.Permanent(err)
	}
	return err // 4xx and network trouble: retry with backoff
}
