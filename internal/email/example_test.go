package email_test

import (
	"context"
	"fmt"
	"time"

	"github.com/heraldmq/herald/internal/email"
	"github.com/heraldmq/herald/internal/smtptest"
)

// Send a message built from a payload to a server that refuses one of its
// recipients: the other still gets it, and each reply is reported.
func Example() {
	srv, err := smtptest.Start(smtptest.Options{Rcpt: smtptest.PerRecipient(map[string][]*smtptest.Reply{
		"gone@example.org": {{Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "no such user"}},
	})})
	if err != nil {
		panic(err)
	}
	defer srv.Close() //nolint:errcheck // example

	sender, err := email.NewSender(email.Config{Servers: []email.ServerConfig{
		{Addr: srv.Addr(), TLS: email.TLSNone, PoolSize: 4}, // a local test server: no TLS
	}})
	if err != nil {
		panic(err)
	}
	defer sender.Close() //nolint:errcheck // example

	m, err := email.Decode([]byte(`{"to":["Ann <ann@example.org>","gone@example.org"],"template":"expiring","data":{"Username":"ann"}}`))
	if err != nil {
		panic(err)
	}
	tpls, err := email.ParseTemplates(map[string]email.TemplateSource{
		"expiring": {Subject: "Your subscription", Text: "{{.Username}}, your subscription is expiring soon"},
	})
	if err != nil {
		panic(err)
	}
	rules := email.Rules{DefaultFrom: "Herald <noreply@example.com>", Templates: tpls}
	if err := m.Validate(rules); err != nil {
		panic(err)
	}
	if m, err = m.Render(rules); err != nil {
		panic(err)
	}
	data, err := email.Build(m, "herald.42@example.com", time.Now())
	if err != nil {
		panic(err)
	}
	results, err := sender.Send(context.Background(), email.Envelope{From: "noreply@example.com", To: m.Recipients()}, data)
	if err != nil {
		panic(err)
	}
	for _, r := range results {
		fmt.Println(r.Address, r.Status, r.Reply.Code, r.Reply.Enhanced)
	}
	// Output:
	// ann@example.org sent 250 2.0.0
	// gone@example.org refused 550 5.1.1
}
