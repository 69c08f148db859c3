package email

import (
	"bufio"
	"bytes"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// FuzzMessage feeds arbitrary payloads through what a job's payload goes
// through: Decode, Validate, Render (templates included, with the
// payload's data) and Build. Invariants: nothing panics; a message that
// validates and renders builds; and the built header block holds exactly
// the fields herald sets plus the payload's own extra headers, each once:
// no value can smuggle in a header (Bcc, a second To...) of its own.
func FuzzMessage(f *testing.F) {
	tpls, err := ParseTemplates(map[string]TemplateSource{
		"subscription-expiring": {Subject: "Your subscription", Text: "{{.Username}}, your subscription is expiring soon",
			HTML: "<p>{{.Username}}, your subscription is expiring soon</p>"},
		"subject-from-data": {Subject: "{{.Subject}}", Text: "x"},
	})
	if err != nil {
		f.Fatal(err)
	}
	rules := Rules{DefaultFrom: "Herald <noreply@example.com>", Templates: tpls, MaxBytes: 64 << 10}
	for _, seed := range []string{
		`{"to":["ann@example.org"],"subject":"hi","text":"hello"}`,
		`{"to":["a@example.org","b@example.org"],"cc":["c@example.org"],"bcc":["d@example.org"],"reply_to":"r@example.org","subject":"s","html":"<b>x</b>","headers":{"X-Campaign":"spring"}}`,
		`{"to":["ann@example.org"],"template":"subscription-expiring","data":{"Username":"ann"}}`,
		`{"to":["ann@example.org"],"template":"subject-from-data","data":{"Subject":"a\r\nBcc: evil@example.org"}}`,
		`{"to":["ann@example.org"],"subject":"a\r\nBcc: evil@example.org","text":"x"}`,
		`{"to":["ann@example.org"],"headers":{"X-A":"b\nTo: evil@example.org"},"text":"x"}`,
		`{"to":["ann@example.org\r\nBcc: evil@example.org"],"text":"x"}`,
		`{"from":"\"Ann\" <ann@example.org>","to":["=?utf-8?q?x?= <x@example.org>"],"subject":"héllo wörld","text":"x"}`,
	} {
		f.Add([]byte(seed))
	}
	date := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := Decode(payload)
		if err != nil {
			return
		}
		if err := m.Validate(rules); err != nil {
			return
		}
		r, err := m.Render(rules)
		if err != nil {
			return
		}
		raw, err := Build(r, "herald.1@example.com", date)
		if err != nil {
			// go-mail may refuse what it cannot encode; that is a clear
			// error, not an injection.
			return
		}
		hdr, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw))).ReadMIMEHeader()
		if err != nil {
			t.Fatalf("built message's header does not parse: %v\n%s", err, raw)
		}
		allowed := map[string]bool{"From": true, "To": true, "Cc": true, "Reply-To": true, "Subject": true,
			"Message-Id": true, "Date": true, "Mime-Version": true, "Content-Type": true,
			"Content-Transfer-Encoding": true}
		for name := range r.Headers {
			allowed[textproto.CanonicalMIMEHeaderKey(name)] = true
		}
		for name, values := range hdr {
			if !allowed[name] {
				t.Fatalf("built message has header %q (%q) that nothing asked for: injection\npayload: %s\n%s", name, values, payload, raw)
			}
			if len(values) != 1 {
				t.Fatalf("header %q appears %d times: %q\n%s", name, len(values), values, raw)
			}
		}
		if got := hdr.Get("Message-Id"); !strings.Contains(got, "herald.1@example.com") {
			t.Fatalf("Message-ID = %q", got)
		}
	})
}
