// Package email sends herald's email jobs: it validates and renders a
// message from a job's payload (directly or through a named template),
// builds it with github.com/wneessen/go-mail, and delivers it over pooled,
// persistent SMTP connections with failover, rate limits and per-recipient
// results (see Sender).
package email

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrInvalidMessage: a payload is not a valid message. The error is a
	// *FieldError naming the field.
	ErrInvalidMessage = errors.New("invalid email message")
	// ErrTooLarge: the built message exceeds the size limit.
	ErrTooLarge = errors.New("email message too large")
	// ErrThrottled: every usable server, or every recipient's domain, is
	// paused after a throttling reply; the error is a *ThrottledError.
	ErrThrottled = errors.New("email: throttled")
	// ErrNoServer: no SMTP server could be reached.
	ErrNoServer = errors.New("email: no SMTP server reachable")
	// ErrClosed: the Sender was closed.
	ErrClosed = errors.New("email: sender closed")
	// ErrAbandoned: Envelope.Proceed said no; nothing was sent.
	ErrAbandoned = errors.New("email: send abandoned before the first command")
)

// FieldError names the payload field that is wrong and why.
type FieldError struct {
	// Field is a JSON path inside the payload, e.g. "to[1]" or
	// "headers.X-Tag".
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Is makes every FieldError match ErrInvalidMessage.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidMessage }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// Message is an email job's payload. Either Text/HTML or Template is
// given; addresses are RFC 5322 ("Ann <ann@example.com>" or a bare
// address).
type Message struct {
	// From defaults to the kind's configured sender.
	From    string   `json:"from,omitempty"`
	To      []string `json:"to,omitempty"`
	Cc      []string `json:"cc,omitempty"`
	Bcc     []string `json:"bcc,omitempty"`
	ReplyTo string   `json:"reply_to,omitempty"`
	// Subject overrides the template's subject when both are set.
	Subject string `json:"subject,omitempty"`
	Text    string `json:"text,omitempty"`
	HTML    string `json:"html,omitempty"`
	// Headers are extra header fields (X-Campaign, List-Unsubscribe...).
	// Fields herald sets itself (From, To, Message-ID, ...) are refused.
	Headers map[string]string `json:"headers,omitempty"`
	// Template names a configured template; Data is its dot.
	Template string         `json:"template,omitempty"`
	Data     map[string]any `json:"data,omitempty"`
}

// Decode parses a payload strictly: unknown fields are refused, so a typo
// ("too") fails at enqueue instead of sending a message without it.
func Decode(payload []byte) (*Message, error) {
	var m Message
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, &FieldError{Field: "payload", Message: "must be an email message object: " + err.Error()}
	}
	if dec.More() {
		return nil, &FieldError{Field: "payload", Message: "must hold one JSON object"}
	}
	return &m, nil
}

// reservedHeaders are set by herald from the message's own fields; letting
// Headers set them would allow spoofing the envelope's story or breaking
// the MIME structure.
var reservedHeaders = []string{
	"bcc", "cc", "content-transfer-encoding", "content-type", "date", "from", "message-id",
	"mime-version", "reply-to", "sender", "subject", "to",
}

// Recipients returns the envelope recipients (To, Cc, Bcc), bare and
// de-duplicated case-insensitively, in order. Call Validate first.
func (m *Message) Recipients() []string {
	var out []string
	seen := map[string]bool{}
	for _, list := range [][]string{m.To, m.Cc, m.Bcc} {
		for _, a := range list {
			addr, err := mail.ParseAddress(a)
			if err != nil {
				continue
			}
			k := strings.ToLower(addr.Address)
			if !seen[k] {
				seen[k] = true
				out = append(out, addr.Address)
			}
		}
	}
	return out
}

// FirstRecipient is the bare first To address (or Cc, Bcc when To is
// empty): the default ordering key of an email job, so one recipient's
// messages arrive in the order they were enqueued.
func (m *Message) FirstRecipient() string {
	if r := m.Recipients(); len(r) > 0 {
		return strings.ToLower(r[0])
	}
	return ""
}

// Rules are what Validate checks a message against.
type Rules struct {
	// DefaultFrom is used when the message has no From.
	DefaultFrom string
	// Templates are the configured templates.
	Templates *Templates
	// MaxBytes caps the message's content (subject, text, html, headers);
	// the built message is checked again at send time. 0 means no limit.
	MaxBytes int
	// MaxRecipients caps To+Cc+Bcc. 0 means 1000.
	MaxRecipients int
}

// Validate checks m: addresses parse, there is a sender and a recipient,
// no header value carries CR or LF (header injection), the template exists,
// and the content fits MaxBytes. The error is a *FieldError.
func (m *Message) Validate(r Rules) error {
	if m.From == "" && r.DefaultFrom == "" {
		return fieldErr("from", "is required (the kind has no default sender)")
	}
	if m.From != "" {
		if err := checkAddress("from", m.From); err != nil {
			return err
		}
	}
	n := 0
	for _, f := range []struct {
		name string
		list []string
	}{{"to", m.To}, {"cc", m.Cc}, {"bcc", m.Bcc}} {
		for i, a := range f.list {
			if err := checkAddress(f.name+"["+strconv.Itoa(i)+"]", a); err != nil {
				return err
			}
			n++
		}
	}
	if n == 0 {
		return fieldErr("to", "at least one recipient (to, cc or bcc) is required")
	}
	if limit := cmp.Or(r.MaxRecipients, 1000); n > limit {
		return fieldErr("to", "%d recipients; the limit is %d per message", n, limit)
	}
	if m.ReplyTo != "" {
		if err := checkAddress("reply_to", m.ReplyTo); err != nil {
			return err
		}
	}
	if err := checkHeaderValue("subject", m.Subject); err != nil {
		return err
	}
	for _, name := range sortedKeys(m.Headers) {
		field := "headers." + name
		if !validHeaderName(name) {
			return fieldErr(field, "is not a valid header name")
		}
		if slices.Contains(reservedHeaders, strings.ToLower(name)) {
			return fieldErr(field, "is set by herald from the message's fields; use them instead")
		}
		if err := checkHeaderValue(field, m.Headers[name]); err != nil {
			return err
		}
	}
	switch {
	case m.Template != "":
		if m.Text != "" || m.HTML != "" {
			return fieldErr("template", "give either a template or text/html, not both")
		}
		if r.Templates == nil || !r.Templates.Has(m.Template) {
			return fieldErr("template", "no template named %q is configured", m.Template)
		}
	case m.Data != nil:
		return fieldErr("data", "is only used with a template")
	case m.Text == "" && m.HTML == "":
		return fieldErr("text", "a body (text or html) or a template is required")
	}
	if r.MaxBytes > 0 {
		size := len(m.Subject) + len(m.Text) + len(m.HTML)
		for k, v := range m.Headers {
			size += len(k) + len(v)
		}
		if size > r.MaxBytes {
			return fieldErr("payload", "the message content is %d bytes; the limit is %d", size, r.MaxBytes)
		}
	}
	return nil
}

func checkAddress(field, a string) error {
	if strings.ContainsAny(a, "\r\n\x00") {
		return fieldErr(field, "must not contain line breaks or NUL")
	}
	addr, err := mail.ParseAddress(a)
	if err != nil {
		return fieldErr(field, "%q is not a valid email address", a)
	}
	local, domain, ok := strings.Cut(addr.Address, "@")
	if !ok || local == "" || domain == "" || strings.ContainsAny(addr.Address, "<> \t") {
		return fieldErr(field, "%q is not a valid email address", a)
	}
	return nil
}

// checkHeaderValue refuses CR and LF: a value with them would end its
// header and start a new one (or the body), which is header injection.
func checkHeaderValue(field, v string) error {
	if strings.ContainsAny(v, "\r\n\x00") {
		return fieldErr(field, "must not contain line breaks (CR, LF) or NUL")
	}
	return nil
}

func validHeaderName(name string) bool {
	if name == "" || len(name) > 76 {
		return false
	}
	for i := range len(name) {
		c := name[i]
		if c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// Render applies the message's template (if any) and the default sender,
// returning the final message. Template output is checked like payload
// values: a subject rendered with a line break is refused.
func (m *Message) Render(r Rules) (*Message, error) {
	out := *m
	if out.From == "" {
		out.From = r.DefaultFrom
	}
	if m.Template != "" {
		if r.Templates == nil {
			return nil, fieldErr("template", "no template named %q is configured", m.Template)
		}
		subject, text, html, err := r.Templates.Execute(m.Template, m.Data)
		if err != nil {
			return nil, err
		}
		if out.Subject == "" {
			out.Subject = subject
		}
		out.Text, out.HTML = text, html
		out.Template, out.Data = "", nil
		if err := checkHeaderValue("subject", out.Subject); err != nil {
			return nil, err
		}
	}
	return &out, nil
}

// Build renders a validated, rendered message as RFC 5322 bytes with a
// stable Message-ID (<messageID>) and the given date. Bcc recipients are
// left out of the headers.
func Build(m *Message, messageID string, date time.Time) ([]byte, error) {
	msg := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	if err := msg.From(m.From); err != nil {
		return nil, fieldErr("from", "%v", err)
	}
	if len(m.To) > 0 {
		if err := msg.To(m.To...); err != nil {
			return nil, fieldErr("to", "%v", err)
		}
	}
	if len(m.Cc) > 0 {
		if err := msg.Cc(m.Cc...); err != nil {
			return nil, fieldErr("cc", "%v", err)
		}
	}
	if m.ReplyTo != "" {
		if err := msg.ReplyTo(m.ReplyTo); err != nil {
			return nil, fieldErr("reply_to", "%v", err)
		}
	}
	msg.Subject(m.Subject)
	msg.SetMessageIDWithValue(messageID)
	msg.SetDateWithValue(date)
	for _, name := range sortedKeys(m.Headers) {
		msg.SetGenHeader(gomail.Header(name), m.Headers[name])
	}
	switch {
	case m.Text != "" && m.HTML != "":
		msg.SetBodyString(gomail.TypeTextPlain, m.Text)
		msg.AddAlternativeString(gomail.TypeTextHTML, m.HTML)
	case m.HTML != "":
		msg.SetBodyString(gomail.TypeTextHTML, m.HTML)
	default:
		msg.SetBodyString(gomail.TypeTextPlain, m.Text)
	}
	var buf bytes.Buffer
	buf.Grow(len(m.Text) + len(m.HTML) + 1024)
	if _, err := msg.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("email: build message: %w", err)
	}
	return buf.Bytes(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
