package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/mail"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/email"
	"github.com/heraldmq/herald/internal/smtptest"
)

// emailBundle is a real client on SQLite running an email kind against an
// in-process SMTP server.
type emailBundle struct {
	client *herald.Client
	srv    *smtptest.Server
}

func setupEmail(t *testing.T, opts smtptest.Options, templates map[string]email.TemplateSource) *emailBundle {
	t.Helper()
	srv, err := smtptest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	sender, err := email.NewSender(email.Config{
		Servers:       []email.ServerConfig{{Addr: srv.Addr(), TLS: email.TLSNone, PoolSize: 2, Timeout: 5 * time.Second}},
		ThrottlePause: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sender.Close() })
	tpls, err := email.ParseTemplates(templates)
	if err != nil {
		t.Fatal(err)
	}
	h, err := Email(EmailConfig{Sender: sender, From: "Herald <noreply@herald.example>", Templates: tpls})
	if err != nil {
		t.Fatal(err)
	}
	c, err := herald.New(herald.Config{DataDir: t.TempDir(), PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register("mail", h, herald.KindConfig{MaxAttempts: 3, BackoffBase: 20 * time.Millisecond, BackoffCap: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Stop(ctx)
	})
	return &emailBundle{client: c, srv: srv}
}

func (b *emailBundle) run(t *testing.T, payload string) *herald.Job {
	t.Helper()
	res, err := b.client.Enqueue(t.Context(), herald.EnqueueParams{Kind: "mail", Payload: json.RawMessage(payload)})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := b.client.Get(t.Context(), res.Job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if j.State.Finalized() {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %d still %s after 10s (errors %+v)", j.ID, j.State, j.Errors)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func output(t *testing.T, j *herald.Job) map[string]email.RecipientResult {
	t.Helper()
	var out EmailOutput
	if err := json.Unmarshal(j.Output, &out); err != nil {
		t.Fatalf("output %s: %v", j.Output, err)
	}
	m := map[string]email.RecipientResult{}
	for _, r := range out.Recipients {
		m[r.Address] = r
	}
	return m
}

func TestEmailHandler(t *testing.T) {
	t.Parallel()
	refuse := &smtptest.Reply{Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "no such user"}
	later := &smtptest.Reply{Code: 441, Enhanced: [3]int{4, 4, 1}, Message: "try later"}
	throttle := &smtptest.Reply{Code: 451, Enhanced: [3]int{4, 7, 1}, Message: "rate limited"}
	tests := []struct {
		name         string
		script       map[string][]*smtptest.Reply
		to           string
		wantState    herald.JobState
		wantStatus   map[string]string
		wantMessages [][]string // envelope recipients of each message the server accepted
	}{
		{
			name: "all sent", to: `["a@x.example","b@x.example"]`, wantState: herald.StateCompleted,
			wantStatus:   map[string]string{"a@x.example": "sent", "b@x.example": "sent"},
			wantMessages: [][]string{{"a@x.example", "b@x.example"}},
		},
		{
			name: "partial refusal completes and records the refusal", to: `["a@x.example","gone@x.example"]`,
			script:       map[string][]*smtptest.Reply{"gone@x.example": {refuse}},
			wantState:    herald.StateCompleted,
			wantStatus:   map[string]string{"a@x.example": "sent", "gone@x.example": "refused"},
			wantMessages: [][]string{{"a@x.example"}},
		},
		{
			name: "deferred recipient is retried alone", to: `["a@x.example","late@y.example"]`,
			script:       map[string][]*smtptest.Reply{"late@y.example": {later}},
			wantState:    herald.StateCompleted,
			wantStatus:   map[string]string{"a@x.example": "sent", "late@y.example": "sent"},
			wantMessages: [][]string{{"a@x.example"}, {"late@y.example"}},
		},
		{
			name: "throttled domain is retried after the pause", to: `["a@x.example","t@slow.example"]`,
			script:       map[string][]*smtptest.Reply{"t@slow.example": {throttle, throttle}},
			wantState:    herald.StateCompleted,
			wantStatus:   map[string]string{"a@x.example": "sent", "t@slow.example": "sent"},
			wantMessages: [][]string{{"a@x.example"}, {"t@slow.example"}},
		},
		{
			name: "every recipient refused fails permanently", to: `["gone@x.example"]`,
			script:     map[string][]*smtptest.Reply{"gone@x.example": {refuse}},
			wantState:  herald.StateDiscarded,
			wantStatus: map[string]string{"gone@x.example": "refused"},
		},
		{
			name: "deferred past max attempts is discarded", to: `["late@x.example"]`,
			script:     map[string][]*smtptest.Reply{"late@x.example": {later, later, later}},
			wantState:  herald.StateDiscarded,
			wantStatus: map[string]string{"late@x.example": "deferred"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupEmail(t, smtptest.Options{Rcpt: smtptest.PerRecipient(tt.script)}, nil)
			j := b.run(t, `{"to":`+tt.to+`,"subject":"hello","text":"body"}`)
			if j.State != tt.wantState {
				t.Fatalf("state %s, want %s (errors %+v)", j.State, tt.wantState, j.Errors)
			}
			out := output(t, j)
			for addr, want := range tt.wantStatus {
				if got := out[addr]; got.Status != want {
					t.Errorf("%s: status %q (reply %+v), want %q", addr, got.Status, got.Reply, want)
				}
			}
			if r := out["gone@x.example"]; r.Status == "refused" && (r.Reply == nil || r.Reply.Code != 550 || r.Reply.Enhanced != "5.1.1") {
				t.Errorf("refusal recorded as %+v", r.Reply)
			}
			msgs := b.srv.Messages()
			if len(msgs) != len(tt.wantMessages) {
				t.Fatalf("server accepted %d messages, want %d: %+v", len(msgs), len(tt.wantMessages), msgs)
			}
			var firstID string
			for i, m := range msgs {
				if strings.Join(m.To, ",") != strings.Join(tt.wantMessages[i], ",") {
					t.Errorf("message %d went to %v, want %v", i, m.To, tt.wantMessages[i])
				}
				parsed, err := mail.ReadMessage(bytes.NewReader(m.Data))
				if err != nil {
					t.Fatal(err)
				}
				id := parsed.Header.Get("Message-Id")
				if want := "<herald." + strconv.FormatInt(j.ID, 10) + "@herald.example>"; id != want {
					t.Errorf("Message-ID %q, want %q", id, want)
				}
				if i == 0 {
					firstID = id
				} else if id != firstID {
					t.Errorf("retry changed the Message-ID: %q then %q", firstID, id)
				}
			}
		})
	}
}

func TestEmailHandlerTemplate(t *testing.T) {
	t.Parallel()
	b := setupEmail(t, smtptest.Options{}, map[string]email.TemplateSource{
		"subscription-expiring": {Subject: "Subscription", Text: "{{.Username}}, your subscription is expiring soon"},
	})
	j := b.run(t, `{"to":["ann@x.example"],"template":"subscription-expiring","data":{"Username":"ann"}}`)
	if j.State != herald.StateCompleted {
		t.Fatalf("state %s: %+v", j.State, j.Errors)
	}
	msgs := b.srv.Messages()
	if len(msgs) != 1 || !bytes.Contains(msgs[0].Data, []byte("ann, your subscription is expiring soon")) {
		t.Fatalf("messages %+v", msgs)
	}
	// A template error is the payload's fault: no retry.
	j = b.run(t, `{"to":["ann@x.example"],"template":"subscription-expiring","data":{"Name":"ann"}}`)
	if j.State != herald.StateDiscarded || j.Attempt != 1 {
		t.Errorf("missing template data: state %s after %d attempts", j.State, j.Attempt)
	}
}

func TestEmailHandlerTransactionFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		opts       smtptest.Options
		wantState  herald.JobState
		wantAtt    int
		wantErr    string
		wantStatus string
	}{
		{"DATA 554 is permanent", smtptest.Options{Data: func(smtptest.Message) *smtptest.Reply {
			return &smtptest.Reply{Code: 554, Enhanced: [3]int{5, 6, 0}, Message: "rejected"}
		}}, herald.StateDiscarded, 1, "554 5.6.0 rejected", "refused"},
		{"MAIL 451 retries", smtptest.Options{Mail: func(string) *smtptest.Reply {
			return &smtptest.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Message: "busy"}
		}}, herald.StateDiscarded, 3, "451 4.3.0 busy", "deferred"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupEmail(t, tt.opts, nil)
			j := b.run(t, `{"to":["a@x.example"],"subject":"s","text":"t"}`)
			if j.State != tt.wantState || j.Attempt != tt.wantAtt {
				t.Fatalf("state %s after %d attempts; want %s after %d", j.State, j.Attempt, tt.wantState, tt.wantAtt)
			}
			if last := j.Errors[len(j.Errors)-1].Message; !strings.Contains(last, tt.wantErr) {
				t.Errorf("last error %q does not carry the reply %q", last, tt.wantErr)
			}
			// The transaction's reply is the recipient's recorded answer.
			r := output(t, j)["a@x.example"]
			if r.Reply == nil || !strings.HasPrefix(tt.wantErr, strconv.Itoa(r.Reply.Code)+" "+r.Reply.Enhanced) || r.Status != tt.wantStatus {
				t.Errorf("recorded %s %+v; want status %s with the reply %q", r.Status, r.Reply, tt.wantStatus, tt.wantErr)
			}
		})
	}
}

func TestPrepareEmail(t *testing.T) {
	t.Parallel()
	prep := PrepareEmail(EmailConfig{From: "a@herald.example"})
	p := herald.EnqueueParams{Kind: "mail", Payload: json.RawMessage(`{"to":["Ann <Ann@X.example>"],"text":"t"}`)}
	if err := prep(&p); err != nil || p.Key != "ann@x.example" {
		t.Fatalf("prepare: %v, key %q", err, p.Key)
	}
	p = herald.EnqueueParams{Kind: "mail", Key: "mine", Payload: json.RawMessage(`{"to":["a@x.example"],"text":"t"}`)}
	if err := prep(&p); err != nil || p.Key != "mine" {
		t.Fatalf("an explicit key was replaced: %v, key %q", err, p.Key)
	}
	p = herald.EnqueueParams{Kind: "mail", Payload: json.RawMessage(`{"to":["a@x.example"],"cc":["bad"],"text":"t"}`)}
	err := prep(&p)
	var fe *herald.FieldError
	if !errors.As(err, &fe) || fe.Field != "payload.cc[0]" || !strings.Contains(fe.Message, `"bad"`) {
		t.Fatalf("err = %v; want a field error on payload.cc[0] naming the address", err)
	}
}

// TestEmailOutputCompacted: the record of a message to a thousand
// recipients with long replies exceeds the output limit; a compact record
// is kept instead of none, so a retry would not resend to everyone.
func TestEmailOutputCompacted(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("this mailbox does not exist here ", 6)
	b := setupEmail(t, smtptest.Options{Rcpt: func(to string) *smtptest.Reply {
		if strings.HasPrefix(to, "ok") {
			return nil
		}
		return &smtptest.Reply{Code: 550, Enhanced: [3]int{5, 1, 1}, Message: long}
	}}, nil)
	to := make([]string, 1000)
	to[0] = `"ok@x.example"`
	for i := 1; i < len(to); i++ {
		to[i] = `"gone` + strconv.Itoa(i) + `@x.example"`
	}
	j := b.run(t, `{"to":[`+strings.Join(to, ",")+`],"subject":"s","text":"t"}`)
	if j.State != herald.StateCompleted {
		t.Fatalf("state %s: %+v", j.State, j.Errors)
	}
	out := output(t, j)
	if len(out) != 1000 || out["ok@x.example"].Status != "sent" || out["gone7@x.example"].Status != "refused" ||
		out["gone7@x.example"].Reply.Code != 550 {
		t.Fatalf("%d recipients recorded; ok: %+v, gone7: %+v", len(out), out["ok@x.example"], out["gone7@x.example"])
	}
	if len(j.Output) > 256<<10 || bytes.Contains(j.Output, []byte("does not exist")) {
		t.Errorf("output of %d bytes is not the compact record", len(j.Output))
	}
}
