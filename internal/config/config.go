// Package config is the configuration of `herald serve`: one documented
// Config struct, loaded in layers with koanf — defaults < YAML file <
// HERALD_* environment < command-line flags — and validated with errors
// that name the offending key.
//
// Keys are snake_case and nest with dots in messages (kinds.billing.timeout).
// In the environment, HERALD_ is stripped, the rest is lowercased and a
// double underscore nests: HERALD_DATA_DIR is data_dir and
// HERALD_KINDS__BILLING__CONCURRENCY is kinds.billing.concurrency.
package config

import (
	"cmp"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"

	"github.com/heraldmq/herald"
)

// Config is the service configuration. Default returns it with every
// default applied; Load layers a file, the environment and flags over that.
type Config struct {
	// Listen is the HTTP API's host:port. Without Tokens and Insecure it
	// must be a loopback address. Defaults to "127.0.0.1:8080".
	Listen string `koanf:"listen"`
	// DataDir holds the embedded SQLite database when Store is empty.
	// Defaults to "./herald-data".
	DataDir string `koanf:"data_dir"`
	// Store selects the store: empty for the embedded SQLite database in
	// DataDir, a SQLite file path, or a postgres:// URL (optionally with
	// ?schema=name and ?poll_only=true for PgBouncer in transaction mode),
	// which several nodes may share. Secret: Redacted hides its password.
	// Defaults to "".
	Store string `koanf:"store"`
	// Workers is the global cap on concurrently running jobs.
	// Defaults to 1000.
	Workers int `koanf:"workers"`
	// StoreLoops is how many store loops this node runs, each writing its
	// own cycles on its own connection with its share of workers and of
	// each kind's concurrency. Defaults to 0: the store's preference (2 on
	// PostgreSQL, where one loop keeps one database backend busy; 1 on
	// SQLite, which allows no more).
	StoreLoops int `koanf:"store_loops,omitempty"`
	// NodeName identifies this process as lease owner. Defaults to "": the
	// library picks a random name.
	NodeName string `koanf:"node_name"`
	// Lease is how long a claimed job stays this node's without renewal
	// (renewed every third of it). After a node dies or stalls, its jobs
	// run elsewhere once their lease ends: shorter means faster recovery,
	// longer tolerates longer pauses (GC, a slow database). Defaults to 15s.
	Lease time.Duration `koanf:"lease"`
	// ShutdownTimeout is how long a stopping server lets running jobs
	// finish before it gives them back to the queue. Defaults to 30s.
	ShutdownTimeout time.Duration `koanf:"shutdown_timeout"`
	// PollInterval is the longest an idle node sleeps before looking for
	// work other nodes added or that came due. Defaults to 0: the
	// library's 1s.
	PollInterval time.Duration `koanf:"poll_interval,omitempty"`
	// GCHeadroomMiB is the least allocation, in MiB, between the live heap
	// and the next garbage collection: while the live heap is small, GOGC
	// is raised to leave this much room, so a busy node does not collect
	// dozens of times a second (see internal/gctune). 0 leaves the
	// collector alone, as does setting GOGC in the environment.
	// Defaults to 32 (measured: 32 saved ~8 % of CPU in bench throughput;
	// 128 saved nothing more and added ~100 MiB of RSS).
	GCHeadroomMiB int `koanf:"gc_headroom_mib"`
	// MaxPayloadBytes caps one job's payload. Defaults to 1 MiB.
	MaxPayloadBytes int `koanf:"max_payload_bytes"`
	// MaxRequestBytes caps an HTTP request body, which bounds a batch.
	// Defaults to 32 MiB.
	MaxRequestBytes int64 `koanf:"max_request_bytes"`
	// MaxBacklog is the pending-job count above which enqueue answers 429.
	// Defaults to 0: no limit.
	MaxBacklog int64 `koanf:"max_backlog"`
	// Insecure allows serving a non-loopback address without Tokens.
	// Defaults to false.
	Insecure bool `koanf:"insecure"`
	// Tokens are the accepted bearer tokens; empty means no authentication
	// (loopback only, unless Insecure). Secret: Redacted hides them.
	// Defaults to none.
	Tokens []string `koanf:"tokens"`
	// Log configures operational logging.
	Log Log `koanf:"log"`
	// Kinds maps a kind name to its handler and policy. Defaults to the
	// built-in kinds "noop" and "sleep"; a file entry of the same name
	// overrides their fields.
	Kinds map[string]Kind `koanf:"kinds"`
	// Topics maps an event topic (POST /v1/events/{topic}) to a kind.
	// Defaults to none.
	Topics map[string]Topic `koanf:"topics"`
	// Mailings configures POST /v1/mailings (seed 001's format).
	Mailings Mailings `koanf:"mailings"`
}

// Mailings configures the mailings API.
type Mailings struct {
	// Kind is the email kind mailings become; it must be of type email.
	// Defaults to "": the mailings API answers 404.
	Kind string `koanf:"kind"`
}

// Log configures operational logging.
type Log struct {
	// Level is debug, info, warn or error. Defaults to "info".
	Level string `koanf:"level"`
	// Format is text, json, or auto (text on a terminal, JSON otherwise).
	// Defaults to "auto".
	Format string `koanf:"format"`
}

// Kind is one job kind: which handler runs it and with what policy. Zero
// numeric fields take the library's defaults (herald.KindConfig).
type Kind struct {
	// Type is the handler: noop, sleep, webhook or email. Required.
	Type string `koanf:"type"`
	// Concurrency caps this kind's running jobs. Defaults to 0: Workers.
	Concurrency int `koanf:"concurrency,omitempty"`
	// RateLimit caps job starts per second. Defaults to 0: no limit.
	RateLimit float64 `koanf:"rate_limit,omitempty"`
	// RateBurst is how many starts may happen at once under RateLimit.
	// Defaults to 1 when RateLimit is set.
	RateBurst int `koanf:"rate_burst,omitempty"`
	// Timeout bounds one attempt. Defaults to 0: none.
	Timeout time.Duration `koanf:"timeout,omitempty"`
	// MaxAttempts is the attempts before a job is discarded. Defaults to 0:
	// the library's 25.
	MaxAttempts int `koanf:"max_attempts,omitempty"`
	// BackoffBase is the delay after the first failure; it doubles per
	// attempt. Defaults to 0: the library's 1s.
	BackoffBase time.Duration `koanf:"backoff_base,omitempty"`
	// BackoffCap is the largest backoff delay. Defaults to 0: the
	// library's 1h.
	BackoffCap time.Duration `koanf:"backoff_cap,omitempty"`
	// OnDiscard is what a key does after a dead letter: continue with its
	// next job, or block until an operator retries or cancels it.
	// Defaults to "continue".
	OnDiscard string `koanf:"on_discard"`
	// Webhook configures a kind of type webhook; other types must not set
	// it. Defaults to nil.
	Webhook *Webhook `koanf:"webhook"`
	// Email configures a kind of type email; other types must not set it.
	// Defaults to nil.
	Email *Email `koanf:"email"`
}

// Email configures delivery of an email kind's jobs (docs/email.md).
type Email struct {
	// From is the sender of messages whose payload has none. Defaults to
	// "": every payload must name one.
	From string `koanf:"from"`
	// Hostname is the right-hand side of Message-IDs. Defaults to "": the
	// domain of From, else the machine's host name.
	Hostname string `koanf:"hostname,omitempty"`
	// Servers are the SMTP servers, tried in order. Required.
	Servers []SMTPServer `koanf:"servers"`
	// Rate caps messages per second over all servers. Defaults to 0: no
	// limit.
	Rate float64 `koanf:"rate,omitempty"`
	// RateBurst is the burst under Rate. Defaults to 1 when Rate is set.
	RateBurst int `koanf:"rate_burst,omitempty"`
	// DomainRate caps messages per second to each recipient domain.
	// Defaults to 0: no limit.
	DomainRate float64 `koanf:"domain_rate,omitempty"`
	// DomainBurst is the burst under DomainRate. Defaults to 1 when
	// DomainRate is set.
	DomainBurst int `koanf:"domain_burst,omitempty"`
	// ThrottlePause is how long a server answering 421/454, or a domain
	// answering 450/451/452, is left alone. Defaults to 30s.
	ThrottlePause time.Duration `koanf:"throttle_pause"`
	// MaxMessageBytes caps a message. Defaults to 10485760 (10 MiB).
	MaxMessageBytes int `koanf:"max_message_bytes"`
	// MaxRecipients caps to+cc+bcc of one message. Defaults to 1000.
	MaxRecipients int `koanf:"max_recipients"`
	// Templates are named message templates. Defaults to none.
	Templates map[string]EmailTemplate `koanf:"templates,omitempty"`
}

// SMTPServer is one SMTP server of an email kind.
type SMTPServer struct {
	// Addr is host:port. Required.
	Addr string `koanf:"addr"`
	// TLS is starttls (required), opportunistic, implicit (SMTPS) or
	// none. Defaults to "starttls".
	TLS string `koanf:"tls"`
	// Username enables SMTP AUTH. Defaults to "": no AUTH.
	Username string `koanf:"username,omitempty"`
	// Password is the AUTH password. Secret: Redacted hides it.
	// Defaults to "".
	Password string `koanf:"password,omitempty"`
	// Auth is the AUTH mechanism: PLAIN, LOGIN, CRAM-MD5 or SCRAM-SHA-256.
	// Defaults to "PLAIN".
	Auth string `koanf:"auth"`
	// HELO is the name given in EHLO. Defaults to "localhost".
	HELO string `koanf:"helo"`
	// PoolSize is the cap on open connections to this server; idle ones
	// are kept for reuse. Defaults to 10.
	PoolSize int `koanf:"pool_size"`
	// IdleTimeout closes connections unused this long. Defaults to 30s.
	IdleTimeout time.Duration `koanf:"idle_timeout"`
	// Timeout bounds dialing and each SMTP command. Defaults to 30s.
	Timeout time.Duration `koanf:"timeout"`
}

// EmailTemplate is one named template: Subject and Text are Go
// text/templates, HTML an html/template; each body inline or from a file.
type EmailTemplate struct {
	// Subject is the subject line template. Defaults to "".
	Subject string `koanf:"subject,omitempty"`
	// Text is the plain-text body template. Defaults to "".
	Text string `koanf:"text,omitempty"`
	// TextFile reads Text from a file instead. Defaults to "".
	TextFile string `koanf:"text_file,omitempty"`
	// HTML is the HTML body template. Defaults to "".
	HTML string `koanf:"html,omitempty"`
	// HTMLFile reads HTML from a file instead. Defaults to "".
	HTMLFile string `koanf:"html_file,omitempty"`
}

// Webhook configures delivery of a webhook kind's jobs.
type Webhook struct {
	// URL receives each job's payload. Required; absolute http or https.
	URL string `koanf:"url"`
	// Method is the HTTP method. Defaults to "POST".
	Method string `koanf:"method"`
	// Headers are added to every request. Defaults to none.
	Headers map[string]string `koanf:"headers,omitempty"`
	// Secret is the HMAC-SHA256 key that signs each request; empty sends
	// unsigned requests. Secret: Redacted hides it. Defaults to "".
	Secret string `koanf:"secret"`
	// Timeout bounds one request. Defaults to 10s.
	Timeout time.Duration `koanf:"timeout"`
}

// Topic maps an event topic to a kind.
type Topic struct {
	// Kind is the kind events of this topic become; it must be configured.
	// Required.
	Kind string `koanf:"kind"`
	// KeyField names the top-level JSON field of the event body whose value
	// is the ordering key. Defaults to "": events are unordered.
	KeyField string `koanf:"key_field,omitempty"`
}

// Kind types and other enumerations accepted in the configuration.
const (
	TypeNoop    = "noop"
	TypeSleep   = "sleep"
	TypeWebhook = "webhook"
	TypeEmail   = "email"

	OnDiscardContinue = "continue"
	OnDiscardBlock    = "block"
)

// Redaction replaces secrets in Redacted's result.
const Redaction = "REDACTED"

// Default returns the configuration used when nothing else is given,
// including the built-in kinds noop and sleep.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:8080",
		DataDir:         "./herald-data",
		Workers:         1000,
		Lease:           15 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		GCHeadroomMiB:   32,
		MaxPayloadBytes: 1 << 20,
		MaxRequestBytes: 32 << 20,
		Log:             Log{Level: "info", Format: "auto"},
		Kinds: map[string]Kind{
			TypeNoop:  {Type: TypeNoop, OnDiscard: OnDiscardContinue},
			TypeSleep: {Type: TypeSleep, OnDiscard: OnDiscardContinue},
		},
		Topics: map[string]Topic{},
	}
}

// withKindDefaults fills the per-kind defaults that depend on what the
// kind sets (rate_burst only with rate_limit, webhook fields only for a
// webhook), so the effective config shows them.
func (c Config) withKindDefaults() Config {
	kinds := make(map[string]Kind, len(c.Kinds))
	for name, k := range c.Kinds {
		if k.OnDiscard == "" {
			k.OnDiscard = OnDiscardContinue
		}
		if k.RateLimit > 0 && k.RateBurst == 0 {
			k.RateBurst = 1
		}
		if k.Webhook != nil {
			w := *k.Webhook
			if w.Method == "" {
				w.Method = http.MethodPost
			}
			if w.Timeout == 0 {
				w.Timeout = 10 * time.Second
			}
			k.Webhook = &w
		}
		if k.Email != nil {
			e := *k.Email
			if e.Rate > 0 && e.RateBurst == 0 {
				e.RateBurst = 1
			}
			if e.DomainRate > 0 && e.DomainBurst == 0 {
				e.DomainBurst = 1
			}
			e.ThrottlePause = cmp.Or(e.ThrottlePause, 30*time.Second)
			e.MaxMessageBytes = cmp.Or(e.MaxMessageBytes, 10<<20)
			e.MaxRecipients = cmp.Or(e.MaxRecipients, 1000)
			servers := make([]SMTPServer, len(e.Servers))
			for i, sv := range e.Servers {
				sv.TLS = cmp.Or(sv.TLS, "starttls")
				sv.Auth = cmp.Or(sv.Auth, "PLAIN")
				sv.HELO = cmp.Or(sv.HELO, "localhost")
				sv.PoolSize = cmp.Or(sv.PoolSize, 10)
				sv.IdleTimeout = cmp.Or(sv.IdleTimeout, 30*time.Second)
				sv.Timeout = cmp.Or(sv.Timeout, 30*time.Second)
				servers[i] = sv
			}
			e.Servers = servers
			k.Email = &e
		}
		kinds[name] = k
	}
	c.Kinds = kinds
	return c
}

// ClientConfig maps the service config onto the library's herald.Config.
// Store is left nil: the caller opens the store that c.Store names.
func (c Config) ClientConfig() herald.Config {
	return herald.Config{
		DataDir:         c.DataDir,
		Workers:         c.Workers,
		StoreLoops:      c.StoreLoops,
		NodeName:        c.NodeName,
		LeaseDuration:   c.Lease,
		MaxPayloadBytes: c.MaxPayloadBytes,
		PollInterval:    c.PollInterval,
	}
}

// KindConfig maps a kind's policy onto the library's herald.KindConfig.
func (k Kind) KindConfig() herald.KindConfig {
	kc := herald.KindConfig{
		Concurrency: k.Concurrency,
		Timeout:     k.Timeout,
		MaxAttempts: k.MaxAttempts,
		BackoffBase: k.BackoffBase,
		BackoffCap:  k.BackoffCap,
	}
	if k.OnDiscard == OnDiscardBlock {
		kc.OnDiscard = herald.DiscardBlock
	}
	return kc
}

// Redacted returns a copy of c with secrets replaced by "REDACTED": each
// token (so their count stays visible), webhook secrets, SMTP passwords, the
// password of a store URL, and header values whose names suggest a credential
// (Authorization, Cookie, *token*, *secret*, *key*, *password*). Empty
// secrets stay empty, so "unsigned" remains visible. c is not modified.
func (c Config) Redacted() Config {
	if c.Tokens != nil {
		tokens := make([]string, len(c.Tokens))
		for i, t := range c.Tokens {
			tokens[i] = redact(t)
		}
		c.Tokens = tokens
	}
	if u, err := url.Parse(c.Store); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Redaction)
			c.Store = u.String()
		}
	}
	if c.Kinds != nil {
		kinds := make(map[string]Kind, len(c.Kinds))
		for name, k := range c.Kinds {
			if k.Webhook != nil {
				w := *k.Webhook
				w.Secret = redact(w.Secret)
				if w.Headers != nil {
					w.Headers = maps.Clone(w.Headers)
					for h, v := range w.Headers {
						if sensitiveHeader(h) {
							w.Headers[h] = redact(v)
						}
					}
				}
				k.Webhook = &w
			}
			if k.Email != nil {
				e := *k.Email
				servers := make([]SMTPServer, len(e.Servers))
				for i, sv := range e.Servers {
					sv.Password = redact(sv.Password)
					servers[i] = sv
				}
				e.Servers = servers
				k.Email = &e
			}
			kinds[name] = k
		}
		c.Kinds = kinds
	}
	return c
}

func redact(s string) string {
	if s == "" {
		return ""
	}
	return Redaction
}

func sensitiveHeader(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "authorization", "proxy-authorization", "cookie":
		return true
	}
	for _, word := range []string{"token", "secret", "key", "password", "auth"} {
		if strings.Contains(n, word) {
			return true
		}
	}
	return false
}

// YAML renders c as YAML with the same keys Load reads, sorted by name;
// durations are written in Go syntax ("30s"). Loading the output gives c
// back. Call Redacted first before showing it to anyone.
func (c Config) YAML() ([]byte, error) {
	m, _ := toYAMLValue(reflect.ValueOf(c)).(map[string]any)
	return yaml.Parser().Marshal(m)
}

var durationType = reflect.TypeFor[time.Duration]()

// fieldKey returns a field's config key from its koanf tag ("" for none),
// and whether YAML leaves the field out when zero: ",omitempty" marks the
// fields whose zero means "the library's default", which is clearer unsaid.
func fieldKey(f reflect.StructField) (key string, omitEmpty bool) {
	key, opts, _ := strings.Cut(f.Tag.Get("koanf"), ",")
	return key, opts == "omitempty"
}

// toYAMLValue turns a config value into maps, slices and scalars keyed by
// the koanf tags. A nil pointer (an unset webhook) is left out.
func toYAMLValue(v reflect.Value) any {
	if v.Type() == durationType {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return toYAMLValue(v.Elem())
	case reflect.Struct:
		m := make(map[string]any, v.NumField())
		for i := range v.NumField() {
			name, omitEmpty := fieldKey(v.Type().Field(i))
			f := v.Field(i)
			if name == "" || f.Kind() == reflect.Pointer && f.IsNil() || omitEmpty && f.IsZero() {
				continue
			}
			m[name] = toYAMLValue(f)
		}
		return m
	case reflect.Map:
		m := make(map[string]any, v.Len())
		for it := v.MapRange(); it.Next(); {
			m[it.Key().String()] = toYAMLValue(it.Value())
		}
		return m
	case reflect.Slice:
		s := make([]any, v.Len())
		for i := range v.Len() {
			s[i] = toYAMLValue(v.Index(i))
		}
		return s
	default:
		return v.Interface()
	}
}
