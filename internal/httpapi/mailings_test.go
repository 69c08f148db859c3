package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/email"
	"github.com/heraldmq/herald/internal/handlers"
	"github.com/heraldmq/herald/internal/smtptest"
)

// seed001 is seed 001's sample request, shortened, unchanged in shape.
const seed001 = `[{"Subject":"прочесть и уничтожить","Body":"Учительница русского языка...","Addresses":["suocq@mailto.plus", "tcuboa@mailto.plus"], "Token":"Иван Иваныч"},
{"Subject":"тема второго сообщения","Body":"Другое сообщение","Addresses":["suocq@mailto.plus", "gone@mailto.plus"], "Token":"Иван Кузьмич"}]`

// mailBundle serves a client whose kind "mail" is a real email kind
// delivering to an in-process SMTP server.
type mailBundle struct {
	*testBundle
	srv *smtptest.Server
}

func setupMail(tb testing.TB, mailings bool) *mailBundle {
	tb.Helper()
	srv, err := smtptest.Start(smtptest.Options{Rcpt: smtptest.PerRecipient(map[string][]*smtptest.Reply{
		"gone@mailto.plus": {{Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "no such mailbox"}},
	})})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = srv.Close() })
	sender, err := email.NewSender(email.Config{Servers: []email.ServerConfig{{Addr: srv.Addr(), TLS: email.TLSNone, Timeout: 5 * time.Second}}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sender.Close() })
	hc := handlers.EmailConfig{Sender: sender, From: "Mailsender <mailsender@herald.example>"}
	h, err := handlers.Email(hc)
	if err != nil {
		tb.Fatal(err)
	}
	client, err := herald.New(herald.Config{DataDir: tb.TempDir(), PollInterval: 10 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	if err := client.Register("mail", h, herald.KindConfig{}); err != nil {
		tb.Fatal(err)
	}
	if err := client.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(ctx)
	})
	opts := Options{Prepare: map[string]func(*herald.EnqueueParams) error{"mail": handlers.PrepareEmail(hc)}}
	if mailings {
		opts.MailingsKind = "mail"
	}
	return &mailBundle{testBundle: &testBundle{client: client, server: New(client, opts), logs: &syncBuffer{}}, srv: srv}
}

type mailingsCreated struct {
	Mailings []struct {
		IDs    []int64 `json:"ids"`
		Status string  `json:"status"`
	} `json:"mailings"`
}

func (b *mailBundle) waitMailing(t *testing.T, id int64) mailingJSON {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec := b.do(http.MethodGet, "/v1/mailings/"+strconv.FormatInt(id, 10), "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET mailing %d: %d %s", id, rec.Code, rec.Body)
		}
		if strings.Contains(rec.Body.String(), "Иван") {
			t.Fatalf("the Token was echoed: %s", rec.Body)
		}
		m := decode[mailingJSON](t, rec)
		if m.Status == mailingSent || m.Status == mailingError {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailing %d still %s", id, m.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMailingsSeed001(t *testing.T) {
	t.Parallel()
	b := setupMail(t, true)
	rec := b.do(http.MethodPost, "/v1/mailings", seed001)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /v1/mailings: %d %s", rec.Code, rec.Body)
	}
	created := decode[mailingsCreated](t, rec)
	if len(created.Mailings) != 2 || len(created.Mailings[0].IDs) != 1 || created.Mailings[0].Status != "awaiting" {
		t.Fatalf("created %+v", created)
	}
	first := b.waitMailing(t, created.Mailings[0].IDs[0])
	if first.Status != "sent" || first.Subject != "прочесть и уничтожить" || len(first.Recipients) != 2 {
		t.Errorf("first mailing %+v", first)
	}
	second := b.waitMailing(t, created.Mailings[1].IDs[0])
	var recips []email.RecipientResult
	for _, raw := range second.Recipients {
		var r email.RecipientResult
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		recips = append(recips, r)
	}
	if second.Status != "sent" || len(recips) != 2 || recips[0].Status != "sent" || recips[1].Status != "refused" ||
		recips[1].Reply == nil || recips[1].Reply.Code != 550 || recips[1].Reply.Enhanced != "5.1.1" {
		t.Errorf("second mailing %+v, recipients %+v", second, recips)
	}
	// The seed sent recipients in Bcc: no To header names them.
	for _, m := range b.srv.Messages() {
		if strings.Contains(string(m.Data), "mailto.plus") {
			t.Errorf("a Bcc address appears in the message:\n%s", m.Data)
		}
	}
	// Stored payloads do not carry the Token either.
	j, err := b.client.Get(t.Context(), created.Mailings[0].IDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(j.Payload), "Иван") {
		t.Errorf("the Token was stored: %s", j.Payload)
	}
}

func TestMailingsSplit(t *testing.T) {
	t.Parallel()
	b := setupMail(t, true)
	rec := b.do(http.MethodPost, "/v1/mailings?split=recipient", seed001)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST: %d %s", rec.Code, rec.Body)
	}
	created := decode[mailingsCreated](t, rec)
	if len(created.Mailings) != 2 || len(created.Mailings[0].IDs) != 2 || len(created.Mailings[1].IDs) != 2 {
		t.Fatalf("created %+v", created)
	}
	gone := b.waitMailing(t, created.Mailings[1].IDs[1])
	if gone.Status != "error" || !strings.Contains(gone.LastError, "550 5.1.1") {
		t.Errorf("a refused single-recipient mailing: %+v", gone)
	}
	j, err := b.client.Get(t.Context(), created.Mailings[0].IDs[1])
	if err != nil {
		t.Fatal(err)
	}
	if j.Key != "tcuboa@mailto.plus" {
		t.Errorf("key %q; want the recipient", j.Key)
	}
}

func TestEmailPayloadValidation(t *testing.T) {
	t.Parallel()
	b := setupMail(t, true)
	tests := []struct {
		name, method, path, body string
		status                   int
		field                    string
	}{
		{"bad to", "POST", "/v1/jobs", `{"kind":"mail","payload":{"to":["a@x.example","not-an-address"],"text":"t"}}`, 422, "payload.to[1]"},
		{"subject injection", "POST", "/v1/jobs", `{"kind":"mail","payload":{"to":["a@x.example"],"subject":"a\r\nBcc: v@x.example","text":"t"}}`, 422, "payload.subject"},
		{"header injection", "POST", "/v1/jobs", `{"kind":"mail","payload":{"to":["a@x.example"],"text":"t","headers":{"X-A":"b\nBcc: v@x.example"}}}`, 422, "payload.headers.X-A"},
		{"batch names the job", "POST", "/v1/jobs/batch", `{"jobs":[{"kind":"mail","payload":{"to":["a@x.example"],"text":"t"}},{"kind":"mail","payload":{"to":["a@x.example"],"cc":["@"],"text":"t"}}]}`, 422, "jobs[1].payload.cc[0]"},
		{"mailing bad address", "POST", "/v1/mailings", `[{"Subject":"s","Body":"b","Addresses":["a@x.example","bad"]}]`, 422, "[0].Addresses[1]"},
		{"split mailing bad address", "POST", "/v1/mailings?split=recipient", `[{"Subject":"s","Body":"b","Addresses":["a@x.example"]},{"Subject":"s","Body":"b","Addresses":["a@x.example","b@","c@x.example"]}]`, 422, "[1].Addresses[1]"},
		{"mailing subject injection", "POST", "/v1/mailings", `[{"Subject":"s\r\nBcc: v@x.example","Body":"b","Addresses":["a@x.example"]}]`, 422, "[0].Subject"},
		{"mailing without addresses", "POST", "/v1/mailings", `[{"Subject":"s","Body":"b","Addresses":[]}]`, 422, "[0].Addresses"},
		{"mailing unknown field", "POST", "/v1/mailings", `[{"Subject":"s","Body":"b","Addresses":["a@x.example"],"Cc":["x"]}]`, 400, "[0].Cc"},
		{"mailings not an array", "POST", "/v1/mailings", `{"Subject":"s"}`, 400, ""},
		{"bad split", "POST", "/v1/mailings?split=domain", `[]`, 400, "split"},
	}
	// Runs after the parallel subtests: nothing was stored by the refused requests.
	t.Cleanup(func() {
		jobs, err := b.client.List(context.Background(), herald.ListParams{})
		if err != nil || len(jobs) != 0 {
			t.Errorf("%d jobs stored by refused requests (%v)", len(jobs), err)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := b.do(tt.method, tt.path, tt.body)
			if rec.Code != tt.status {
				t.Fatalf("%d %s; want %d", rec.Code, rec.Body, tt.status)
			}
			e := decode[errorBody](t, rec)
			if e.Error.Field != tt.field {
				t.Errorf("field %q (%s); want %q", e.Error.Field, e.Error.Message, tt.field)
			}
		})
	}
}

// TestEmailDefaultKey: a job enqueued without a key gets its first
// recipient, lower-cased, as key.
func TestEmailDefaultKey(t *testing.T) {
	t.Parallel()
	b := setupMail(t, false)
	rec := b.do(http.MethodPost, "/v1/jobs", `{"kind":"mail","payload":{"to":["Ann <Ann@X.example>"],"subject":"s","text":"t"}}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if j := decode[jobJSONTest](t, rec); j.Key != "ann@x.example" {
		t.Errorf("key %q; want the first recipient", j.Key)
	}
}

func TestMailingsDisabled(t *testing.T) {
	t.Parallel()
	b := setupMail(t, false)
	for _, r := range []struct{ method, path, body string }{
		{http.MethodPost, "/v1/mailings", seed001},
		{http.MethodGet, "/v1/mailings/1", ""},
	} {
		if rec := b.do(r.method, r.path, r.body); rec.Code != http.StatusNotFound {
			t.Errorf("%s %s: %d, want 404", r.method, r.path, rec.Code)
		}
	}
}

// TestMailingsIdempotent: a producer that repeats a request (a Kafka
// consumer redelivering, say) with the same Idempotency-Key gets the same
// jobs back, and nothing is sent twice.
func TestMailingsIdempotent(t *testing.T) {
	t.Parallel()
	b := setupMail(t, true)
	post := func() mailingsCreated {
		r := b.newRequest(http.MethodPost, "/v1/mailings?split=recipient", []byte(seed001))
		r.Header.Set("Idempotency-Key", "batch-7")
		rec := b.serve(r)
		if rec.Code != http.StatusCreated {
			t.Fatalf("POST: %d %s", rec.Code, rec.Body)
		}
		return decode[mailingsCreated](t, rec)
	}
	first, again := post(), post()
	if fmt.Sprint(first) != fmt.Sprint(again) {
		t.Errorf("repeated request got other jobs: %v then %v", first, again)
	}
	jobs, err := b.client.List(t.Context(), herald.ListParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 4 {
		t.Errorf("%d jobs stored, want 4", len(jobs))
	}
}
