package email

import (
	"bufio"
	"bytes"
	"errors"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	tpls, err := ParseTemplates(map[string]TemplateSource{"hello": {Subject: "hi", Text: "hello {{.Name}}"}})
	if err != nil {
		t.Fatal(err)
	}
	rules := Rules{DefaultFrom: "app@example.com", Templates: tpls, MaxBytes: 1000}
	tests := []struct {
		name      string
		payload   string
		wantField string // "" for valid
	}{
		{"minimal", `{"to":["ann@example.org"],"subject":"s","text":"t"}`, ""},
		{"display names", `{"from":"App <app@example.com>","to":["Ann <ann@example.org>"],"cc":["b@example.org"],"bcc":["c@example.org"],"reply_to":"r@example.com","subject":"s","html":"<p>t</p>"}`, ""},
		{"template", `{"to":["ann@example.org"],"template":"hello","data":{"Name":"Ann"}}`, ""},
		{"unknown field", `{"too":["ann@example.org"],"text":"t"}`, "payload"},
		{"not an object", `["ann@example.org"]`, "payload"},
		{"no recipient", `{"subject":"s","text":"t"}`, "to"},
		{"bad to", `{"to":["ann@example.org","not an address"],"text":"t"}`, "to[1]"},
		{"bad cc", `{"to":["a@example.org"],"cc":["@example.org"],"text":"t"}`, "cc[0]"},
		{"bad bcc", `{"bcc":["ann"],"text":"t"}`, "bcc[0]"},
		{"bad from", `{"from":"app","to":["a@example.org"],"text":"t"}`, "from"},
		{"bad reply_to", `{"reply_to":"x y","to":["a@example.org"],"text":"t"}`, "reply_to"},
		{"CRLF in subject", `{"to":["a@example.org"],"subject":"hi\r\nBcc: victim@example.net","text":"t"}`, "subject"},
		{"LF in subject", `{"to":["a@example.org"],"subject":"hi\nX: y","text":"t"}`, "subject"},
		{"CRLF in a header value", `{"to":["a@example.org"],"text":"t","headers":{"X-Tag":"a\r\nBcc: victim@example.net"}}`, "headers.X-Tag"},
		{"CRLF in an address", `{"to":["a@example.org\r\nBcc: victim@example.net"],"text":"t"}`, "to[0]"},
		{"bad header name", `{"to":["a@example.org"],"text":"t","headers":{"X Tag":"v"}}`, "headers.X Tag"},
		{"reserved header", `{"to":["a@example.org"],"text":"t","headers":{"bcc":"victim@example.net"}}`, "headers.bcc"},
		{"no body", `{"to":["a@example.org"],"subject":"s"}`, "text"},
		{"unknown template", `{"to":["a@example.org"],"template":"nope"}`, "template"},
		{"template and text", `{"to":["a@example.org"],"template":"hello","text":"t"}`, "template"},
		{"data without template", `{"to":["a@example.org"],"text":"t","data":{"a":1}}`, "data"},
		{"too large", `{"to":["a@example.org"],"text":"` + strings.Repeat("x", 1001) + `"}`, "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, err := Decode([]byte(tt.payload))
			if err == nil {
				err = m.Validate(rules)
			}
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("err = %v; want a FieldError", err)
			}
			if fe.Field != tt.wantField {
				t.Errorf("field = %q (%v); want %q", fe.Field, err, tt.wantField)
			}
		})
	}
	if err := (&Message{To: []string{"a@example.org"}, Text: "t"}).Validate(Rules{}); err == nil {
		t.Error("a message without from and without a default sender was accepted")
	}
}

// TestBuildNoHeaderInjection: whatever reaches Build (even a value that
// skipped Validate), the built message has exactly the intended header
// fields: go-mail encodes or folds values, and no CR/LF can start a field.
func TestBuildNoHeaderInjection(t *testing.T) {
	t.Parallel()
	m := &Message{
		From: "App <app@example.com>", To: []string{"ann@example.org"}, Bcc: []string{"hidden@example.org"},
		Subject: "hi\r\nBcc: victim@example.net", Text: "body\r\n.\r\nMAIL FROM:<x@y>",
		Headers: map[string]string{"X-Tag": "v\nBcc: victim@example.net"},
	}
	data, err := Build(m, "herald.7@example.com", time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get("Bcc"); got != "" {
		t.Errorf("Bcc header present: %q", got)
	}
	for name := range msg.Header {
		switch name {
		case "From", "To", "Subject", "Message-Id", "Date", "Mime-Version", "Content-Type", "Content-Transfer-Encoding", "X-Tag":
		default:
			t.Errorf("unexpected header field %q in\n%s", name, data)
		}
	}
	if bytes.Contains(data, []byte("hidden@example.org")) {
		t.Error("a Bcc recipient appears in the message")
	}
	if got := msg.Header.Get("Message-Id"); got != "<herald.7@example.com>" {
		t.Errorf("Message-ID = %q", got)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if strings.HasPrefix(strings.ToLower(sc.Text()), "bcc:") {
			t.Errorf("an injected Bcc line: %q", sc.Text())
		}
	}
}

func TestTemplates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	htmlFile := filepath.Join(dir, "expiring.html")
	if err := os.WriteFile(htmlFile, []byte(`<p>{{.Username}}, your subscription is expiring soon</p>`), 0o600); err != nil {
		t.Fatal(err)
	}
	tpls, err := ParseTemplates(map[string]TemplateSource{
		"subscription-expiring": {
			Subject:  "Your subscription",
			Text:     "{{.Username}}, your subscription is expiring soon",
			HTMLFile: htmlFile,
		},
		"subject-from-data": {Subject: "{{.S}}", Text: "x"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name             string
		tpl              string
		data             map[string]any
		wantSubject      string
		wantText         string
		wantHTML         string
		wantErrFieldName string
	}{
		{"seed 000 text and html", "subscription-expiring", map[string]any{"Username": "ann"}, "Your subscription",
			"ann, your subscription is expiring soon", "<p>ann, your subscription is expiring soon</p>", ""},
		{"html escapes data", "subscription-expiring", map[string]any{"Username": "<script>x</script>"}, "Your subscription",
			"<script>x</script>, your subscription is expiring soon", "<p>&lt;script&gt;x&lt;/script&gt;, your subscription is expiring soon</p>", ""},
		{"missing key fails", "subscription-expiring", map[string]any{"Name": "ann"}, "", "", "", "data"},
		{"rendered subject with a line break", "subject-from-data", map[string]any{"S": "a\r\nBcc: v@example.net"}, "", "", "", "subject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := &Message{To: []string{"a@example.org"}, Template: tt.tpl, Data: tt.data}
			r, err := m.Render(Rules{DefaultFrom: "app@example.com", Templates: tpls})
			if tt.wantErrFieldName != "" {
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != tt.wantErrFieldName {
					t.Fatalf("err = %v; want a FieldError on %q", err, tt.wantErrFieldName)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Subject != tt.wantSubject || r.Text != tt.wantText || r.HTML != tt.wantHTML || r.From != "app@example.com" {
				t.Errorf("rendered %+v", r)
			}
		})
	}
	if _, err := ParseTemplates(map[string]TemplateSource{"bad": {Text: "{{.Unclosed"}}); err == nil {
		t.Error("a template with a syntax error parsed")
	}
	if _, err := ParseTemplates(map[string]TemplateSource{"empty": {Subject: "s"}}); err == nil {
		t.Error("a template without a body parsed")
	}
}

func TestRecipients(t *testing.T) {
	t.Parallel()
	m := &Message{To: []string{"Ann <Ann@Example.org>", "b@example.org"}, Cc: []string{"ann@example.org"}, Bcc: []string{"c@example.org"}}
	got := strings.Join(m.Recipients(), ",")
	if got != "Ann@Example.org,b@example.org,c@example.org" {
		t.Errorf("recipients %s", got)
	}
	if k := m.FirstRecipient(); k != "ann@example.org" {
		t.Errorf("first recipient %q", k)
	}
}
