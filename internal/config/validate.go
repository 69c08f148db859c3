package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/mail"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/heraldmq/herald/store/postgres"
)

// ErrInvalid is matched (errors.Is) by every configuration problem that
// Load and Validate report.
var ErrInvalid = errors.New("invalid configuration")

// FieldError is one configuration problem: the key it concerns, what is
// wrong, and, for Load, where the value came from.
type FieldError struct {
	// Key is the dotted key path, e.g. kinds.billing.webhook.url.
	Key string
	// Problem says what is wrong and, where it helps, how to fix it.
	Problem string
	// Source is where the value came from ("file herald.yaml",
	// "env HERALD_WORKERS", "flag --workers"); empty when unknown.
	Source string
}

func (e *FieldError) Error() string {
	if e.Source == "" {
		return e.Key + ": " + e.Problem
	}
	return e.Key + ": " + e.Problem + " (" + e.Source + ")"
}

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Problems splits an error from Load or Validate into its problems, one per
// line of output; any other error is returned alone.
func Problems(err error) []error {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, Problems(e)...)
		}
		return out
	}
	return []error{err}
}

// MaxNameLen bounds kind and topic names.
const MaxNameLen = 128

// Validate checks c and returns every problem at once (errors.Join of
// *FieldError, each matching ErrInvalid), or nil.
func (c Config) Validate() error {
	var v validator
	v.listen(c)
	for i, t := range c.Tokens {
		if strings.TrimSpace(t) == "" || strings.ContainsAny(t, " \t\r\n") {
			v.fail(fmt.Sprintf("tokens[%d]", i), "must be non-empty and contain no whitespace")
		}
	}
	if c.Store == "" && c.DataDir == "" {
		v.fail("data_dir", "must not be empty when store is empty (the embedded SQLite database lives there)")
	}
	if c.StoreLoops < 0 {
		v.fail("store_loops", "must not be negative, got %d", c.StoreLoops)
	}
	if c.StoreLoops > 1 && !postgres.IsURL(c.Store) {
		v.fail("store_loops", "is %d, but the SQLite store runs one loop (more need a postgres:// store)", c.StoreLoops)
	}
	if c.Workers < 1 {
		v.fail("workers", "must be at least 1, got %d", c.Workers)
	}
	v.duration("shutdown_timeout", c.ShutdownTimeout)
	if c.Lease < 100*time.Millisecond {
		v.fail("lease", "must be at least 100ms, got %s", c.Lease)
	}
	v.duration("poll_interval", c.PollInterval)
	if c.GCHeadroomMiB < 0 {
		v.fail("gc_headroom_mib", "must be 0 (off) or more, got %d", c.GCHeadroomMiB)
	}
	if c.MaxPayloadBytes < 1 {
		v.fail("max_payload_bytes", "must be at least 1, got %d", c.MaxPayloadBytes)
	}
	if c.MaxRequestBytes < 1 {
		v.fail("max_request_bytes", "must be at least 1, got %d", c.MaxRequestBytes)
	} else if c.MaxRequestBytes < int64(c.MaxPayloadBytes) {
		v.fail("max_request_bytes", "must be at least max_payload_bytes (%d), got %d", c.MaxPayloadBytes, c.MaxRequestBytes)
	}
	if c.MaxBacklog < 0 {
		v.fail("max_backlog", "must not be negative (0 means no limit), got %d", c.MaxBacklog)
	}
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "auto", "text", "json")

	for _, name := range sortedMapKeys(c.Kinds) {
		v.kind("kinds."+name, name, c.Kinds[name])
	}
	if c.Mailings.Kind != "" {
		if k, ok := c.Kinds[c.Mailings.Kind]; !ok || k.Type != TypeEmail {
			v.fail("mailings.kind", "must name a kind of type email, got %q", c.Mailings.Kind)
		}
	}
	for _, name := range sortedMapKeys(c.Topics) {
		key, t := "topics."+name, c.Topics[name]
		v.name(key, name)
		switch _, ok := c.Kinds[t.Kind]; {
		case t.Kind == "":
			v.fail(key+".kind", "required: the kind this topic's events become")
		case !ok:
			v.fail(key+".kind", "no kind named %q is configured (kinds: %s)", t.Kind, strings.Join(sortedMapKeys(c.Kinds), ", "))
		}
		if t.KeyField != "" && strings.TrimSpace(t.KeyField) != t.KeyField {
			v.fail(key+".key_field", "must not start or end with spaces, got %q", t.KeyField)
		}
	}
	return errors.Join(v.problems...)
}

type validator struct {
	problems []error
}

func (v *validator) fail(key, format string, args ...any) {
	v.problems = append(v.problems, &FieldError{Key: key, Problem: fmt.Sprintf(format, args...)})
}

func (v *validator) duration(key string, d time.Duration) {
	if d < 0 {
		v.fail(key, "must not be negative, got %s", d)
	}
}

func (v *validator) oneOf(key, got string, allowed ...string) {
	if !slices.Contains(allowed, got) {
		v.fail(key, "must be one of %s, got %q", strings.Join(allowed, ", "), got)
	}
}

func (v *validator) listen(c Config) {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		v.fail("listen", "must be host:port, e.g. 127.0.0.1:8080, got %q", c.Listen)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.fail("listen", "port must be a number from 0 to 65535, got %q", port)
	}
	if len(c.Tokens) == 0 && !c.Insecure && !isLoopback(host) {
		v.fail("listen", "%q is not a loopback address and no tokens are configured: set tokens (HERALD_TOKENS) to require authentication, or --insecure (insecure: true) to serve it without", c.Listen)
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (v *validator) name(key, name string) {
	if name == "" || len(name) > MaxNameLen || strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) >= 0 {
		v.fail(key, "name must be 1 to %d characters of A-Z, a-z, 0-9, '.', '_' and '-'", MaxNameLen)
	}
}

func (v *validator) kind(key, name string, k Kind) {
	v.name(key, name)
	switch k.Type {
	case "":
		v.fail(key+".type", "required: one of %s, %s, %s, %s", TypeNoop, TypeSleep, TypeWebhook, TypeEmail)
	case TypeNoop, TypeSleep, TypeWebhook, TypeEmail:
	default:
		v.fail(key+".type", "must be one of %s, %s, %s, %s, got %q", TypeNoop, TypeSleep, TypeWebhook, TypeEmail, k.Type)
	}
	if k.Concurrency < 0 {
		v.fail(key+".concurrency", "must not be negative (0 means workers), got %d", k.Concurrency)
	}
	if math.IsNaN(k.RateLimit) || math.IsInf(k.RateLimit, 0) || k.RateLimit < 0 {
		v.fail(key+".rate_limit", "must be a non-negative number of jobs per second (0 means none), got %v", k.RateLimit)
	}
	switch {
	case k.RateLimit > 0 && k.RateBurst < 1:
		v.fail(key+".rate_burst", "must be at least 1 when rate_limit is set, got %d", k.RateBurst)
	case k.RateBurst < 0:
		v.fail(key+".rate_burst", "must not be negative, got %d", k.RateBurst)
	}
	v.duration(key+".timeout", k.Timeout)
	if k.MaxAttempts < 0 {
		v.fail(key+".max_attempts", "must not be negative (0 means the default, 25), got %d", k.MaxAttempts)
	}
	v.duration(key+".backoff_base", k.BackoffBase)
	v.duration(key+".backoff_cap", k.BackoffCap)
	if k.BackoffBase > 0 && k.BackoffCap > 0 && k.BackoffCap < k.BackoffBase {
		v.fail(key+".backoff_cap", "must not be below backoff_base (%s), got %s", k.BackoffBase, k.BackoffCap)
	}
	v.oneOf(key+".on_discard", k.OnDiscard, OnDiscardContinue, OnDiscardBlock)

	switch {
	case k.Type == TypeWebhook && k.Webhook == nil:
		v.fail(key+".webhook.url", "required for type webhook")
	case k.Type == TypeWebhook:
		v.webhook(key+".webhook", *k.Webhook)
	case k.Webhook != nil:
		v.fail(key+".webhook", "only a kind of type webhook takes a webhook section, this one is type %q", k.Type)
	}
	switch {
	case k.Type == TypeEmail && k.Email == nil:
		v.fail(key+".email.servers", "required for type email: at least one SMTP server")
	case k.Type == TypeEmail:
		v.email(key+".email", *k.Email)
	case k.Email != nil:
		v.fail(key+".email", "only a kind of type email takes an email section, this one is type %q", k.Type)
	}
}

func (v *validator) email(key string, e Email) {
	if e.From != "" {
		if a, err := mail.ParseAddress(e.From); err != nil || !strings.Contains(a.Address, "@") || strings.ContainsAny(e.From, "\r\n") {
			v.fail(key+".from", "must be an email address such as \"Herald <noreply@example.com>\", got %q", e.From)
		}
	}
	if len(e.Servers) == 0 {
		v.fail(key+".servers", "required: at least one SMTP server")
	}
	for i, s := range e.Servers {
		sk := fmt.Sprintf("%s.servers[%d]", key, i)
		host, port, err := net.SplitHostPort(s.Addr)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			v.fail(sk+".addr", "must be host:port, e.g. smtp.example.com:587, got %q", s.Addr)
		}
		v.oneOf(sk+".tls", s.TLS, "starttls", "opportunistic", "implicit", "none")
		v.oneOf(sk+".auth", strings.ToUpper(s.Auth), "PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256")
		if s.Password != "" && s.Username == "" {
			v.fail(sk+".username", "required when a password is set")
		}
		if s.PoolSize < 1 {
			v.fail(sk+".pool_size", "must be at least 1, got %d", s.PoolSize)
		}
		v.duration(sk+".idle_timeout", s.IdleTimeout)
		v.duration(sk+".timeout", s.Timeout)
	}
	for _, f := range []struct {
		name string
		rate float64
		b    int
	}{{"rate", e.Rate, e.RateBurst}, {"domain_rate", e.DomainRate, e.DomainBurst}} {
		if math.IsNaN(f.rate) || math.IsInf(f.rate, 0) || f.rate < 0 {
			v.fail(key+"."+f.name, "must be a non-negative number of messages per second (0 means none), got %v", f.rate)
		}
		if f.b < 0 {
			v.fail(key+"."+f.name+"_burst", "must not be negative, got %d", f.b)
		}
	}
	v.duration(key+".throttle_pause", e.ThrottlePause)
	if e.MaxMessageBytes < 0 {
		v.fail(key+".max_message_bytes", "must not be negative, got %d", e.MaxMessageBytes)
	}
	if e.MaxRecipients < 0 {
		v.fail(key+".max_recipients", "must not be negative, got %d", e.MaxRecipients)
	}
	for _, name := range sortedMapKeys(e.Templates) {
		t := e.Templates[name]
		tk := key + ".templates." + name
		if t.Text != "" && t.TextFile != "" {
			v.fail(tk+".text_file", "text and text_file are mutually exclusive")
		}
		if t.HTML != "" && t.HTMLFile != "" {
			v.fail(tk+".html_file", "html and html_file are mutually exclusive")
		}
		if t.Text == "" && t.TextFile == "" && t.HTML == "" && t.HTMLFile == "" {
			v.fail(tk, "needs a body: text, text_file, html or html_file")
		}
	}
}

func (v *validator) webhook(key string, w Webhook) {
	u, err := url.Parse(w.URL)
	switch {
	case w.URL == "":
		v.fail(key+".url", "required for type webhook")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		v.fail(key+".url", "must be an absolute http or https URL, got %q", w.URL)
	}
	if !isToken(w.Method) {
		v.fail(key+".method", "must be an HTTP method such as POST, got %q", w.Method)
	}
	for _, h := range sortedMapKeys(w.Headers) {
		if !isToken(h) {
			v.fail(key+".headers."+h, "is not a valid HTTP header name")
		}
		if strings.ContainsAny(w.Headers[h], "\r\n\x00") {
			v.fail(key+".headers."+h, "value must not contain line breaks or NUL")
		}
	}
	v.duration(key+".timeout", w.Timeout)
}

// isToken reports whether s is an HTTP token (RFC 9110), the syntax of
// methods and header names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)) {
			return false
		}
	}
	return true
}

func sortedMapKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
