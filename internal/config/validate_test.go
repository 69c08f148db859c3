package config_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald/internal/config"
)

// validConfig is a config that passes Validate, with one kind of each type
// and a topic, for the cases to break one rule at a time.
func validConfig() config.Config {
	c := config.Default()
	c.Kinds["billing"] = config.Kind{
		Type:      config.TypeWebhook,
		RateLimit: 5, RateBurst: 1,
		OnDiscard: config.OnDiscardBlock,
		Webhook:   &config.Webhook{URL: "https://billing.test/hook", Method: "POST", Timeout: time.Second},
	}
	c.Topics["invoices"] = config.Topic{Kind: "billing", KeyField: "account_id"}
	return c
}

func TestValidate(t *testing.T) {
	t.Parallel()
	webhook := func(c *config.Config, f func(w *config.Webhook)) {
		k := c.Kinds["billing"]
		w := *k.Webhook
		f(&w)
		k.Webhook = &w
		c.Kinds["billing"] = k
	}
	kind := func(c *config.Config, f func(k *config.Kind)) {
		k := c.Kinds["billing"]
		f(&k)
		c.Kinds["billing"] = k
	}
	for _, tt := range []struct {
		name   string
		change func(c *config.Config)
		want   string // "" means valid
	}{
		{"defaults", func(*config.Config) {}, ""},
		{"short lease", func(c *config.Config) { c.Lease = 2 * time.Second; c.PollInterval = 50 * time.Millisecond }, ""},

		{"negative poll interval", func(c *config.Config) { c.PollInterval = -time.Second }, "poll_interval: must not be negative, got -1s"},
		{"listen not host:port", func(c *config.Config) { c.Listen = "8080" }, "listen: must be host:port"},
		{"listen bad port", func(c *config.Config) { c.Listen = "127.0.0.1:http" }, "listen: port must be a number"},
		{"listen port out of range", func(c *config.Config) { c.Listen = "127.0.0.1:70000" }, "listen: port must be a number"},
		{"public listen without tokens", func(c *config.Config) { c.Listen = "0.0.0.0:8080" }, "listen: \"0.0.0.0:8080\" is not a loopback address and no tokens are configured: set tokens"},
		{"all interfaces without tokens", func(c *config.Config) { c.Listen = ":8080" }, "--insecure"},
		{"public listen with tokens", func(c *config.Config) { c.Listen = "0.0.0.0:8080"; c.Tokens = []string{"t0ken"} }, ""},
		{"public listen insecure", func(c *config.Config) { c.Listen = "10.1.2.3:8080"; c.Insecure = true }, ""},
		{"localhost", func(c *config.Config) { c.Listen = "localhost:8080" }, ""},
		{"ipv6 loopback", func(c *config.Config) { c.Listen = "[::1]:8080" }, ""},
		{"127/8", func(c *config.Config) { c.Listen = "127.0.0.2:0" }, ""},
		{"ipv6 public", func(c *config.Config) { c.Listen = "[2001:db8::1]:8080" }, "listen: \"[2001:db8::1]:8080\" is not a loopback"},
		{"empty token", func(c *config.Config) { c.Tokens = []string{"ok", " "} }, "tokens[1]: must be non-empty"},
		{"no data dir", func(c *config.Config) { c.DataDir = "" }, "data_dir: must not be empty"},
		{"no data dir with a store", func(c *config.Config) { c.DataDir = ""; c.Store = "/var/lib/h.db" }, ""},
		{"workers zero", func(c *config.Config) { c.Workers = 0 }, "workers: must be at least 1"},
		{"negative store loops", func(c *config.Config) { c.StoreLoops = -1 }, "store_loops: must not be negative, got -1"},
		{"store loops on sqlite", func(c *config.Config) { c.StoreLoops = 2 }, "store_loops: is 2, but the SQLite store runs one loop"},
		{"store loops on postgres", func(c *config.Config) { c.StoreLoops = 3; c.Store = "postgres://h@db/herald" }, ""},
		{"lease too short", func(c *config.Config) { c.Lease = 50 * time.Millisecond }, "lease: must be at least 100ms"},
		{"lease zero", func(c *config.Config) { c.Lease = 0 }, "lease: must be at least 100ms"},
		{"postgres store without data dir", func(c *config.Config) { c.DataDir = ""; c.Store = "postgres://h@db/herald" }, ""},
		{"negative shutdown", func(c *config.Config) { c.ShutdownTimeout = -time.Second }, "shutdown_timeout: must not be negative"},
		{"payload zero", func(c *config.Config) { c.MaxPayloadBytes = 0 }, "max_payload_bytes: must be at least 1"},
		{"request below payload", func(c *config.Config) { c.MaxRequestBytes = 1024 }, "max_request_bytes: must be at least max_payload_bytes"},
		{"request zero", func(c *config.Config) { c.MaxRequestBytes = 0 }, "max_request_bytes: must be at least 1"},
		{"negative backlog", func(c *config.Config) { c.MaxBacklog = -1 }, "max_backlog: must not be negative"},
		{"log level", func(c *config.Config) { c.Log.Level = "verbose" }, `log.level: must be one of debug, info, warn, error, got "verbose"`},
		{"log format", func(c *config.Config) { c.Log.Format = "xml" }, `log.format: must be one of auto, text, json, got "xml"`},
		{"kind name chars", func(c *config.Config) { c.Kinds["bad name"] = config.Kind{Type: "noop", OnDiscard: "continue"} }, "kinds.bad name: name must be 1 to 128 characters"},
		{"kind name long", func(c *config.Config) {
			c.Kinds[strings.Repeat("k", 129)] = config.Kind{Type: "noop", OnDiscard: "continue"}
		}, "name must be 1 to 128"},
		{"kind name empty", func(c *config.Config) { c.Kinds[""] = config.Kind{Type: "noop", OnDiscard: "continue"} }, "kinds.: name must be"},
		{"kind type missing", func(c *config.Config) { kind(c, func(k *config.Kind) { k.Type = ""; k.Webhook = nil }) }, "kinds.billing.type: required"},
		{"kind type unknown", func(c *config.Config) { kind(c, func(k *config.Kind) { k.Type = "smtp"; k.Webhook = nil }) }, `kinds.billing.type: must be one of noop, sleep, webhook, email, got "smtp"`},
		{"negative concurrency", func(c *config.Config) { kind(c, func(k *config.Kind) { k.Concurrency = -1 }) }, "kinds.billing.concurrency: must not be negative"},
		{"negative rate", func(c *config.Config) { kind(c, func(k *config.Kind) { k.RateLimit = -1 }) }, "kinds.billing.rate_limit: must be a non-negative number"},
		{"NaN rate", func(c *config.Config) { kind(c, func(k *config.Kind) { k.RateLimit = math.NaN() }) }, "kinds.billing.rate_limit"},
		{"rate without burst", func(c *config.Config) { kind(c, func(k *config.Kind) { k.RateBurst = 0 }) }, "kinds.billing.rate_burst: must be at least 1 when rate_limit is set"},
		{"negative burst", func(c *config.Config) { kind(c, func(k *config.Kind) { k.RateLimit = 0; k.RateBurst = -2 }) }, "kinds.billing.rate_burst: must not be negative"},
		{"negative timeout", func(c *config.Config) { kind(c, func(k *config.Kind) { k.Timeout = -1 }) }, "kinds.billing.timeout: must not be negative"},
		{"negative attempts", func(c *config.Config) { kind(c, func(k *config.Kind) { k.MaxAttempts = -1 }) }, "kinds.billing.max_attempts: must not be negative"},
		{"negative backoff", func(c *config.Config) { kind(c, func(k *config.Kind) { k.BackoffBase = -1 }) }, "kinds.billing.backoff_base: must not be negative"},
		{"cap below base", func(c *config.Config) {
			kind(c, func(k *config.Kind) { k.BackoffBase = time.Minute; k.BackoffCap = time.Second })
		}, "kinds.billing.backoff_cap: must not be below backoff_base"},
		{"on_discard", func(c *config.Config) { kind(c, func(k *config.Kind) { k.OnDiscard = "drop" }) }, `kinds.billing.on_discard: must be one of continue, block, got "drop"`},
		{"webhook section missing", func(c *config.Config) { kind(c, func(k *config.Kind) { k.Webhook = nil }) }, "kinds.billing.webhook.url: required for type webhook"},
		{"webhook url missing", func(c *config.Config) { webhook(c, func(w *config.Webhook) { w.URL = "" }) }, "kinds.billing.webhook.url: required for type webhook"},
		{"webhook url relative", func(c *config.Config) { webhook(c, func(w *config.Webhook) { w.URL = "/hook" }) }, "kinds.billing.webhook.url: must be an absolute http or https URL"},
		{"webhook url scheme", func(c *config.Config) { webhook(c, func(w *config.Webhook) { w.URL = "ftp://x.test/" }) }, "kinds.billing.webhook.url: must be an absolute http or https URL"},
		{"webhook method", func(c *config.Config) { webhook(c, func(w *config.Webhook) { w.Method = "PO ST" }) }, "kinds.billing.webhook.method: must be an HTTP method"},
		{"webhook header name", func(c *config.Config) {
			webhook(c, func(w *config.Webhook) { w.Headers = map[string]string{"X Bad": "v"} })
		}, "kinds.billing.webhook.headers.X Bad: is not a valid HTTP header name"},
		{"webhook header injection", func(c *config.Config) {
			webhook(c, func(w *config.Webhook) { w.Headers = map[string]string{"X-Ok": "v\r\nX-Evil: 1"} })
		}, "kinds.billing.webhook.headers.X-Ok: value must not contain line breaks"},
		{"webhook timeout", func(c *config.Config) { webhook(c, func(w *config.Webhook) { w.Timeout = -1 }) }, "kinds.billing.webhook.timeout: must not be negative"},
		{"webhook on a sleep kind", func(c *config.Config) { kind(c, func(k *config.Kind) { k.Type = "sleep" }) }, "kinds.billing.webhook: only a kind of type webhook"},
		{"email section missing", func(c *config.Config) { c.Kinds["mail"] = config.Kind{Type: "email", OnDiscard: "continue"} }, "kinds.mail.email.servers: required"},
		{"email no servers", func(c *config.Config) { emailKind(c, func(e *config.Email) { e.Servers = nil }) }, "kinds.mail.email.servers: required"},
		{"email server addr", func(c *config.Config) { emailKind(c, func(e *config.Email) { e.Servers[0].Addr = "smtp.example.com" }) }, "kinds.mail.email.servers[0].addr: must be host:port"},
		{"email tls", func(c *config.Config) { emailKind(c, func(e *config.Email) { e.Servers[0].TLS = "ssl" }) }, `kinds.mail.email.servers[0].tls: must be one of starttls, opportunistic, implicit, none, got "ssl"`},
		{"email pool size", func(c *config.Config) { emailKind(c, func(e *config.Email) { e.Servers[0].PoolSize = 0 }) }, "kinds.mail.email.servers[0].pool_size: must be at least 1"},
		{"email password without user", func(c *config.Config) { emailKind(c, func(e *config.Email) { e.Servers[0].Password = "p" }) }, "kinds.mail.email.servers[0].username: required"},
		{"email from", func(c *config.Config) { emailKind(c, func(e *config.Email) { e.From = "noreply" }) }, "kinds.mail.email.from: must be an email address"},
		{"email from injection", func(c *config.Config) {
			emailKind(c, func(e *config.Email) { e.From = "a@b.example\r\nBcc: x@y.example" })
		}, "kinds.mail.email.from"},
		{"email negative rate", func(c *config.Config) { emailKind(c, func(e *config.Email) { e.DomainRate = -1 }) }, "kinds.mail.email.domain_rate: must be a non-negative number"},
		{"email template without body", func(c *config.Config) {
			emailKind(c, func(e *config.Email) { e.Templates = map[string]config.EmailTemplate{"t": {Subject: "s"}} })
		}, "kinds.mail.email.templates.t: needs a body"},
		{"email on a noop kind", func(c *config.Config) {
			c.Kinds["noop"] = config.Kind{Type: "noop", OnDiscard: "continue", Email: &config.Email{}}
		}, "kinds.noop.email: only a kind of type email"},
		{"mailings kind not email", func(c *config.Config) { c.Mailings.Kind = "noop" }, `mailings.kind: must name a kind of type email, got "noop"`},
		{"mailings kind email", func(c *config.Config) { emailKind(c, func(*config.Email) {}); c.Mailings.Kind = "mail" }, ""},
		{"topic without kind", func(c *config.Config) { c.Topics["t"] = config.Topic{} }, "topics.t.kind: required"},
		{"topic unknown kind", func(c *config.Config) { c.Topics["t"] = config.Topic{Kind: "nope"} }, `topics.t.kind: no kind named "nope" is configured`},
		{"topic name", func(c *config.Config) { c.Topics["a/b"] = config.Topic{Kind: "noop"} }, "topics.a/b: name must be"},
		{"topic key field spaces", func(c *config.Config) { c.Topics["t"] = config.Topic{Kind: "noop", KeyField: " id"} }, "topics.t.key_field: must not start or end with spaces"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig()
			tt.change(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted it, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate error\n%v\ndoes not contain %q", err, tt.want)
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Errorf("error does not match ErrInvalid")
			}
			var fe *config.FieldError
			if !errors.As(err, &fe) || fe.Key == "" {
				t.Errorf("error %v is not a *FieldError with a key", err)
			}
		})
	}
}

// An operator sees every mistake at once, one per problem.
func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	c := validConfig()
	c.Listen = "0.0.0.0:8080"
	c.Workers = 0
	c.Log.Level = "loud"
	c.Kinds["billing"] = config.Kind{Type: config.TypeWebhook, OnDiscard: "sometimes", Webhook: &config.Webhook{URL: "billing.test", Method: "POST"}}
	c.Topics["orders"] = config.Topic{Kind: "shipping"}
	err := c.Validate()
	want := []string{
		"listen: ",
		"workers: ",
		"log.level: ",
		"kinds.billing.on_discard: ",
		"kinds.billing.webhook.url: must be an absolute http or https URL",
		"topics.orders.kind: ",
	}
	problems := config.Problems(err)
	if len(problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(problems), len(want), err)
	}
	for i, p := range problems {
		if !strings.HasPrefix(p.Error(), want[i]) {
			t.Errorf("problem %d = %q, want it to start with %q", i, p, want[i])
		}
	}
}

func TestValidateFullExample(t *testing.T) {
	t.Parallel()
	c, err := config.Load("testdata/full.yaml", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("testdata/full.yaml (the documented example) is invalid: %v", err)
	}
}

// emailKind adds a valid email kind "mail" and lets change modify it.
func emailKind(c *config.Config, change func(e *config.Email)) {
	e := &config.Email{
		From:    "Herald <noreply@example.com>",
		Servers: []config.SMTPServer{{Addr: "smtp.example.com:587", TLS: "starttls", Auth: "PLAIN", PoolSize: 10}},
	}
	change(e)
	c.Kinds["mail"] = config.Kind{Type: "email", OnDiscard: "continue", Email: e}
}
