package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldmq/herald/internal/smtptest"
)

// TestMailingsThroughServe: seed 001's request, unchanged, through a real
// `herald serve` configured with an email kind, delivered to a real SMTP
// server; GET /v1/mailings/{id} reports each recipient's reply, and never
// the Token.
func TestMailingsThroughServe(t *testing.T) {
	t.Parallel()
	smtp, err := smtptest.Start(smtptest.Options{Rcpt: smtptest.PerRecipient(map[string][]*smtptest.Reply{
		"gone@mailto.plus": {{Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "no such mailbox"}},
	})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = smtp.Close() })
	s := startServer(t, t.TempDir(), fmt.Sprintf(`
kinds:
  mail:
    type: email
    email:
      from: Mailsender <mailsender@herald.example>
      servers:
        - addr: %s
          tls: none
          pool_size: 2
mailings:
  kind: mail
`, smtp.Addr()))
	status, body, err := post(t.Context(), http.DefaultClient, s.url("/v1/mailings"), `[
{"Subject":"прочесть и уничтожить","Body":"Учительница русского языка...","Addresses":["suocq@mailto.plus","tcuboa@mailto.plus"],"Token":"Иван Иваныч"},
{"Subject":"второе","Body":"Другое","Addresses":["suocq@mailto.plus","gone@mailto.plus"],"Token":"Иван Кузьмич"}]`)
	if err != nil || status != http.StatusCreated {
		t.Fatalf("POST /v1/mailings: %d %s %v", status, body, err)
	}
	var created struct {
		Mailings []struct {
			IDs []int64 `json:"ids"`
		} `json:"mailings"`
	}
	if err := json.Unmarshal(body, &created); err != nil || len(created.Mailings) != 2 {
		t.Fatalf("answer %s: %v", body, err)
	}
	type recipient struct {
		Address string `json:"address"`
		Status  string `json:"status"`
		Reply   struct {
			Code     int    `json:"code"`
			Enhanced string `json:"enhanced"`
		} `json:"reply"`
	}
	var got [2]struct {
		Status     string      `json:"status"`
		Recipients []recipient `json:"recipients"`
	}
	for i, m := range created.Mailings {
		deadline := time.Now().Add(20 * time.Second)
		for {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url(fmt.Sprintf("/v1/mailings/%d", m.IDs[0])), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "Иван") {
				t.Fatalf("the Token was echoed: %s", b)
			}
			if err := json.Unmarshal(b, &got[i]); err != nil {
				t.Fatalf("GET: %s: %v", b, err)
			}
			if got[i].Status == "sent" || got[i].Status == "error" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("mailing %d still %s:\n%s", m.IDs[0], got[i].Status, s.logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got[0].Status != "sent" || len(got[0].Recipients) != 2 || got[0].Recipients[0].Reply.Code != 250 {
		t.Errorf("first mailing %+v", got[0])
	}
	if r := got[1].Recipients; got[1].Status != "sent" || len(r) != 2 || r[1].Status != "refused" || r[1].Reply.Code != 550 || r[1].Reply.Enhanced != "5.1.1" {
		t.Errorf("second mailing %+v", got[1])
	}
	if n := smtp.Count(); n != 2 {
		t.Errorf("the SMTP server accepted %d messages, want 2", n)
	}
	if err := s.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("serve exited with %v:\n%s", err, s.logs.String())
	}
	if strings.Contains(s.logs.String(), "Иван") || strings.Contains(s.logs.String(), "Учительница") {
		t.Errorf("the logs carry a Token or a body:\n%s", s.logs.String())
	}
	// The server closes its side when it reads QUIT (or EOF): give it a moment.
	for deadline := time.Now().Add(2 * time.Second); smtp.Active() != 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if smtp.Active() != 0 {
		t.Errorf("%d SMTP connections still open after serve stopped", smtp.Active())
	}
}
