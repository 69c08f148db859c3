package email

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wneessen/go-mail/smtp"
	"golang.org/x/time/rate"
)

// TLS modes of a server connection.
const (
	// TLSStartTLS requires STARTTLS; a server that does not offer it is an
	// error. The default: credentials and messages never travel in clear.
	TLSStartTLS = "starttls"
	// TLSOpportunistic uses STARTTLS when offered, plain text otherwise.
	TLSOpportunistic = "opportunistic"
	// TLSImplicit speaks TLS from the first byte (SMTPS, port 465).
	TLSImplicit = "implicit"
	// TLSNone never encrypts (a local relay or test sink).
	TLSNone = "none"
)

// ServerConfig is one SMTP server (a relay or smarthost).
type ServerConfig struct {
	// Addr is host:port. Required.
	Addr string
	// TLS is starttls, opportunistic, implicit or none. Defaults to
	// starttls.
	TLS string
	// TLSConfig overrides the TLS settings. Defaults to verifying the
	// server's certificate for the host of Addr, TLS 1.2 or later.
	TLSConfig *tls.Config
	// Username and Password enable SMTP AUTH when Username is set.
	Username, Password string
	// AuthMechanism is PLAIN, LOGIN, CRAM-MD5 or SCRAM-SHA-256. Defaults
	// to PLAIN.
	AuthMechanism string
	// HELO is the name this client gives in EHLO. Defaults to "localhost".
	HELO string
	// PoolSize is the connection cap for this server: at most this many
	// connections are open at once, and idle ones are kept for reuse.
	// Defaults to 10.
	PoolSize int
	// IdleTimeout is how long an unused connection is kept; an older one
	// is closed instead of reused. Defaults to 30s (below the 5 minutes
	// RFC 5321 servers typically allow).
	IdleTimeout time.Duration
	// Timeout bounds dialing and each command's round trip. Defaults to
	// 30s; DATA gets the same per write.
	Timeout time.Duration
}

// Config configures a Sender. Zero fields take the documented defaults.
type Config struct {
	// Servers are tried in order: the first one that is reachable and not
	// paused gets the message. At least one is required.
	Servers []ServerConfig
	// Rate caps messages per second over all servers. Defaults to 0: no
	// limit.
	Rate float64
	// Burst is how many messages may go at once under Rate. Defaults to 1
	// when Rate is set.
	Burst int
	// DomainRate caps messages per second to each recipient domain, the
	// limit large mailbox providers enforce. Defaults to 0: no limit.
	DomainRate float64
	// DomainBurst is the per-domain burst. Defaults to 1 when DomainRate is
	// set.
	DomainBurst int
	// ThrottlePause is how long a server that answered 421 or 454, or a
	// domain that answered 450, 451 or 452, is left alone. Defaults to 30s.
	ThrottlePause time.Duration
	// MaxMessageBytes caps a built message. Defaults to 10 MiB.
	MaxMessageBytes int
	// Logger receives connection-level events (never message contents or
	// addresses above Debug). Defaults to discarding.
	Logger *slog.Logger
	// Now is the clock. Defaults to time.Now.
	Now func() time.Time
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	servers := make([]ServerConfig, len(c.Servers))
	for i, s := range c.Servers {
		s.TLS = cmp.Or(s.TLS, TLSStartTLS)
		s.AuthMechanism = strings.ToUpper(cmp.Or(s.AuthMechanism, "PLAIN"))
		s.HELO = cmp.Or(s.HELO, "localhost")
		s.PoolSize = cmp.Or(s.PoolSize, 10)
		s.IdleTimeout = cmp.Or(s.IdleTimeout, 30*time.Second)
		s.Timeout = cmp.Or(s.Timeout, 30*time.Second)
		servers[i] = s
	}
	c.Servers = servers
	if c.Rate > 0 {
		c.Burst = cmp.Or(c.Burst, 1)
	}
	if c.DomainRate > 0 {
		c.DomainBurst = cmp.Or(c.DomainBurst, 1)
	}
	c.ThrottlePause = cmp.Or(c.ThrottlePause, 30*time.Second)
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, 10<<20)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	if len(c.Servers) == 0 {
		return errors.New("email: at least one server is required")
	}
	for i, s := range c.Servers {
		if _, _, err := splitHostPort(s.Addr); err != nil {
			return fmt.Errorf("email: servers[%d].addr: %w", i, err)
		}
		switch s.TLS {
		case TLSStartTLS, TLSOpportunistic, TLSImplicit, TLSNone:
		default:
			return fmt.Errorf("email: servers[%d].tls: must be starttls, opportunistic, implicit or none, got %q", i, s.TLS)
		}
		switch s.AuthMechanism {
		case "PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256":
		default:
			return fmt.Errorf("email: servers[%d].auth: must be PLAIN, LOGIN, CRAM-MD5 or SCRAM-SHA-256, got %q", i, s.AuthMechanism)
		}
		if s.PoolSize < 1 || s.IdleTimeout < 0 || s.Timeout < 0 {
			return fmt.Errorf("email: servers[%d]: pool_size must be positive and timeouts not negative", i)
		}
	}
	if c.Rate < 0 || c.DomainRate < 0 {
		return errors.New("email: rates must not be negative")
	}
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q must be host:port: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 || host == "" {
		return "", 0, fmt.Errorf("%q must be host:port with a port from 1 to 65535", addr)
	}
	return host, port, nil
}

func defaultTLSConfig(host string) *tls.Config {
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

// Sender delivers messages over pooled SMTP connections. Safe for
// concurrent use; Close it to QUIT the idle connections.
type Sender struct {
	cfg   Config
	pools []*pool
	rate  *rate.Limiter // nil: no global limit

	mu      sync.Mutex
	domains map[string]*domainState
}

type domainState struct {
	lim         *rate.Limiter // nil: no per-domain limit
	pausedUntil time.Time
}

// NewSender validates cfg and prepares the pools. It does not connect:
// connections are opened on first use and then kept.
func NewSender(cfg Config) (*Sender, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Sender{cfg: cfg, domains: map[string]*domainState{}}
	for _, sc := range cfg.Servers {
		p, err := newPool(sc)
		if err != nil {
			return nil, err
		}
		s.pools = append(s.pools, p)
	}
	if cfg.Rate > 0 {
		s.rate = rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst)
	}
	return s, nil
}

// MaxMessageBytes is the size limit of a built message.
func (s *Sender) MaxMessageBytes() int { return s.cfg.MaxMessageBytes }

// Close QUITs idle connections; connections in use close when released.
func (s *Sender) Close() error {
	var wg sync.WaitGroup
	for _, p := range s.pools {
		wg.Go(p.close)
	}
	wg.Wait()
	return nil
}

// Dials is the number of connections opened so far, over all servers.
func (s *Sender) Dials() int64 {
	var n int64
	for _, p := range s.pools {
		n += p.dials.Load()
	}
	return n
}

// Reply is an SMTP server's answer.
type Reply struct {
	Code int `json:"code"`
	// Enhanced is the RFC 3463 status, e.g. "5.1.1"; empty when the server
	// gave none.
	Enhanced string `json:"enhanced,omitempty"`
	Message  string `json:"message,omitempty"`
}

func (r Reply) String() string {
	return strings.TrimSpace(fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Message))
}

// Recipient statuses in a Result.
const (
	// StatusSent: the server accepted the message for this recipient.
	StatusSent = "sent"
	// StatusRefused: the server refused this recipient permanently (5xx).
	StatusRefused = "refused"
	// StatusDeferred: not delivered yet (4xx, throttled, or the attempt
	// ended early); a retry sends to it again.
	StatusDeferred = "deferred"
)

// RecipientResult is what happened to one recipient.
type RecipientResult struct {
	Address string `json:"address"`
	Status  string `json:"status"`
	Reply   *Reply `json:"reply,omitempty"`
	// Server is the server that answered, host:port.
	Server string    `json:"server,omitempty"`
	At     time.Time `json:"at,omitzero"`
}

// ReplyError is a negative SMTP reply to the transaction as a whole (MAIL
// FROM or DATA, or a reply that applies to the whole server).
type ReplyError struct {
	// Command is MAIL, RCPT, DATA or RSET.
	Command string
	Server  string
	Reply
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("email: %s answered %s: %s", e.Server, e.Command, e.Reply)
}

// Temporary reports a 4xx reply: the same message may succeed later.
func (e *ReplyError) Temporary() bool { return e.Code/100 == 4 }

// ThrottledError says when to try again.
type ThrottledError struct {
	Until time.Time
	// Reason names what is paused.
	Reason string
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("email: throttled (%s) until %s", e.Reason, e.Until.Format(time.RFC3339))
}

// Is makes ThrottledError match ErrThrottled.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }

// Envelope is the SMTP envelope of one send.
type Envelope struct {
	From string
	To   []string
	// Proceed, if set, is asked once a connection is ready, just before the
	// first command: false abandons the send with ErrAbandoned (herald
	// passes its lease check, since waiting for a connection or the rate
	// limits may outlast the job's lease).
	Proceed func() bool
}

// throttling reports replies that mean "slow down" (RFC 5321 4.2.2,
// 4.5.3.1.10): the server or domain is paused rather than just retried.
func throttling(code int) bool {
	switch code {
	case 421, 450, 451, 452, 454:
		return true
	}
	return false
}

// Send delivers data to env.To and returns one result per recipient, in
// order. A nil error means the transaction completed: each recipient is
// sent or refused or deferred (see the results). A non-nil error means the
// transaction failed as a whole (ReplyError from MAIL or DATA, ErrThrottled,
// or a network error); recipients accepted before a network error during
// DATA are reported deferred although the server may have the message:
// that is the at-least-once window.
func (s *Sender) Send(ctx context.Context, env Envelope, data []byte) ([]RecipientResult, error) {
	if len(data) > s.cfg.MaxMessageBytes {
		return nil, fmt.Errorf("%w: %d bytes; the limit is %d", ErrTooLarge, len(data), s.cfg.MaxMessageBytes)
	}
	results := make([]RecipientResult, len(env.To))
	now := s.cfg.Now()
	var send []int // indexes of recipients whose domain is not paused
	var earliest time.Time
	for i, to := range env.To {
		results[i] = RecipientResult{Address: to, Status: StatusDeferred}
		if until, paused := s.domainPaused(domainOf(to), now); paused {
			results[i].Reply = &Reply{Code: 451, Enhanced: "4.7.0", Message: "herald: domain throttled until " + until.Format(time.RFC3339)}
			if earliest.IsZero() || until.Before(earliest) {
				earliest = until
			}
			continue
		}
		send = append(send, i)
	}
	if len(send) == 0 {
		return results, &ThrottledError{Until: earliest, Reason: "recipient domains"}
	}
	if err := s.wait(ctx, env, send); err != nil {
		return results, err
	}

	var errs []error
	earliest = time.Time{}
	for _, p := range s.pools {
		if until, paused := p.paused(s.cfg.Now()); paused {
			if earliest.IsZero() || until.Before(earliest) {
				earliest = until
			}
			continue
		}
		for _, i := range send {
			// A failed server's answers do not carry over to the next one.
			results[i] = RecipientResult{Address: env.To[i], Status: StatusDeferred}
		}
		err := s.sendVia(ctx, p, env, data, results, send)
		if err == nil {
			return results, nil
		}
		var re *ReplyError
		if errors.As(err, &re) && !(re.Code == 421 || re.Code == 454) {
			// The server answered the transaction itself: another server
			// would most likely answer the same, and failing over after
			// DATA could deliver twice.
			return results, err
		}
		if ctx.Err() != nil {
			return results, err
		}
		if errors.Is(err, errAfterData) || errors.Is(err, ErrAbandoned) {
			return results, err
		}
		errs = append(errs, err)
		// A reply's text may name a recipient: log its code only.
		attrs := []slog.Attr{slog.String("server", p.cfg.Addr)}
		if re != nil {
			attrs = append(attrs, slog.String("command", re.Command), slog.Int("reply", re.Code), slog.String("enhanced", re.Enhanced))
		} else {
			attrs = append(attrs, slog.String("error", err.Error()))
		}
		s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "email: server failed, trying the next", attrs...)
	}
	if len(errs) == 0 {
		return results, &ThrottledError{Until: earliest, Reason: "every server paused"}
	}
	return results, fmt.Errorf("%w: %w", ErrNoServer, errors.Join(errs...))
}

// errAfterData marks a network failure after the message was handed over:
// the server may have it, so no other server is tried in this attempt.
var errAfterData = errors.New("connection lost during DATA")

// wait applies the global and per-domain rate limits.
func (s *Sender) wait(ctx context.Context, env Envelope, send []int) error {
	if s.rate != nil {
		if err := s.rate.Wait(ctx); err != nil {
			return fmt.Errorf("email: rate limit: %w", err)
		}
	}
	if s.cfg.DomainRate <= 0 {
		return nil
	}
	seen := map[string]bool{}
	for _, i := range send {
		d := domainOf(env.To[i])
		if seen[d] {
			continue
		}
		seen[d] = true
		if err := s.domain(d).lim.Wait(ctx); err != nil {
			return fmt.Errorf("email: domain rate limit: %w", err)
		}
	}
	return nil
}

func (s *Sender) domain(d string) *domainState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.domains[d]
	if !ok {
		st = &domainState{}
		if s.cfg.DomainRate > 0 {
			st.lim = rate.NewLimiter(rate.Limit(s.cfg.DomainRate), s.cfg.DomainBurst)
		}
		s.domains[d] = st
	}
	return st
}

func (s *Sender) domainPaused(d string, now time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.domains[d]
	if !ok {
		return time.Time{}, false
	}
	return st.pausedUntil, now.Before(st.pausedUntil)
}

// DomainPausedUntil is when the pause of addr's domain ends (zero or past
// when it is not paused).
func (s *Sender) DomainPausedUntil(addr string) time.Time {
	until, _ := s.domainPaused(domainOf(addr), s.cfg.Now())
	return until
}

func (s *Sender) pauseDomain(d string, until time.Time) {
	st := s.domain(d)
	s.mu.Lock()
	if until.After(st.pausedUntil) {
		st.pausedUntil = until
	}
	s.mu.Unlock()
}

func domainOf(addr string) string {
	_, d, _ := strings.Cut(addr, "@")
	return strings.ToLower(d)
}

// sendVia runs one transaction on a pooled connection of p, filling
// results for the recipients in send.
//
// It drives MAIL, RCPT and DATA itself on go-mail's smtp.Client instead of
// calling go-mail's Client.Send: Send aborts the whole message when any
// recipient is refused and does not report each recipient's reply, while
// herald must deliver to the accepted recipients and record the refusals
// one by one (and not send to the accepted ones again on retry). It also
// lets herald pipeline the commands (RFC 2920), which go-mail does not.
func (s *Sender) sendVia(ctx context.Context, p *pool, env Envelope, data []byte, results []RecipientResult, send []int) error {
	c, err := p.get(ctx, s.cfg.Now())
	if err != nil {
		return fmt.Errorf("email: connect %s: %w", p.cfg.Addr, err)
	}
	healthy := false
	defer func() { p.put(c, healthy, s.cfg.Now()) }()
	if env.Proceed != nil && !env.Proceed() {
		healthy = true // untouched
		return ErrAbandoned
	}
	// Cancelling ctx interrupts a blocked command through the deadline.
	stop := context.AfterFunc(ctx, c.interrupt)
	defer func() { stop() }()
	// A pooled connection may have been dropped by the server while idle:
	// the first reply on it then fails with a network error, before the
	// server has done anything, so it is replaced once and the
	// transaction starts over.
	for {
		var stale bool
		if ok, _ := c.c.Extension("PIPELINING"); ok && !p.stepwise {
			stale, err = s.pipelined(p, c, env, data, results, send, &healthy)
		} else {
			stale, err = s.stepwise(p, c, env, data, results, send, &healthy)
		}
		if !stale {
			return err
		}
		stop()
		_ = c.c.Close()
		fresh, derr := p.dial1(ctx)
		if derr != nil {
			c.c = nil
			return fmt.Errorf("email: reconnect %s: %w", p.cfg.Addr, derr)
		}
		c.c, c.raw, c.reused = fresh.c, fresh.raw, false
		stop = context.AfterFunc(ctx, c.interrupt)
	}
}

// pipelined sends RSET (on a reused connection), MAIL, every RCPT and DATA
// in one write, then reads their replies in order: one round trip where
// stepwise takes 3 + one per recipient. The replies are the same, so each
// recipient's is still recorded.
func (s *Sender) pipelined(p *pool, c *conn, env Envelope, data []byte, results []RecipientResult, send []int, healthy *bool) (stale bool, err error) {
	server := p.cfg.Addr
	for _, a := range append([]string{env.From}, env.To...) {
		if strings.ContainsAny(a, "\r\n<>") {
			return false, fmt.Errorf("%w: address %q", ErrInvalidMessage, a) // Validate refuses these; never write them
		}
	}
	var b strings.Builder
	if c.reused {
		b.WriteString("RSET\r\n")
	}
	b.WriteString("MAIL FROM:<" + env.From + ">")
	if ok, _ := c.c.Extension("SMTPUTF8"); ok && !isASCII(env) {
		b.WriteString(" SMTPUTF8")
	}
	b.WriteString("\r\n")
	for _, i := range send {
		b.WriteString("RCPT TO:<" + env.To[i] + ">\r\n")
	}
	b.WriteString("DATA\r\n")
	tp := c.c.Text
	if err := c.extend(p.cfg.Timeout); err != nil {
		return false, err
	}
	_, err = tp.W.WriteString(b.String())
	if err == nil {
		err = tp.W.Flush()
	}
	if err != nil {
		return c.reused, fmt.Errorf("email: %s: %w", server, err)
	}
	if c.reused {
		if _, _, err := tp.ReadResponse(250); err != nil {
			if _, ok := errors.AsType[*textproto.Error](err); !ok {
				return true, fmt.Errorf("email: %s RSET: %w", server, err)
			}
			// A refused RSET says nothing about the message: not a
			// ReplyError (which would fail the job), and the connection,
			// its pipeline replies unread, is not reused.
			return false, fmt.Errorf("email: %s refused RSET: %w", server, err)
		}
	}
	_, _, mailErr := tp.ReadResponse(250)
	if mailErr != nil {
		if _, ok := errors.AsType[*textproto.Error](mailErr); !ok {
			return false, fmt.Errorf("email: %s MAIL: %w", server, mailErr)
		}
	}
	var accepted []int
	var abort error
	for _, i := range send {
		_, _, err := tp.ReadResponse(25)
		if mailErr != nil {
			if _, ok := errors.AsType[*textproto.Error](err); !ok && err != nil {
				return false, fmt.Errorf("email: %s RCPT: %w", server, err)
			}
			continue // "503 need MAIL": the MAIL reply says why
		}
		ok, fatal := s.rcptReply(p, env, i, err, results)
		if ok {
			accepted = append(accepted, i)
		}
		if fatal != nil {
			if _, isReply := errors.AsType[*ReplyError](fatal); !isReply {
				return false, fatal
			}
			abort = fatal
		}
	}
	_, _, dataErr := tp.ReadResponse(354)
	if dataErr != nil {
		if _, ok := errors.AsType[*textproto.Error](dataErr); !ok {
			return false, fmt.Errorf("email: %s DATA: %w", server, dataErr)
		}
	}
	switch {
	case mailErr != nil:
		*healthy = dataErr != nil // a server that said 354 anyway waits for a body
		return false, s.transactionError(p, "MAIL", mailErr, healthy)
	case abort != nil:
		return false, abort // 421: the server is closing the connection
	case len(accepted) == 0:
		// Nobody to send to; a server that said 354 anyway waits for a
		// body, so that connection is closed rather than fed an empty one.
		*healthy = dataErr != nil
		return false, nil
	case dataErr != nil:
		return false, s.transactionError(p, "DATA", dataErr, healthy)
	}
	return false, s.body(p, c, data, results, accepted, healthy)
}

// stepwise runs the transaction one command at a time, for servers that do
// not offer PIPELINING.
func (s *Sender) stepwise(p *pool, c *conn, env Envelope, data []byte, results []RecipientResult, send []int, healthy *bool) (stale bool, err error) {
	if err := c.extend(p.cfg.Timeout); err != nil {
		return false, err
	}
	if c.reused {
		// RSET before reusing a connection: a clean transaction whatever
		// the last one left behind, and proof the connection is alive.
		if err := c.c.Reset(); err != nil {
			if _, ok := errors.AsType[*textproto.Error](err); !ok {
				return true, err
			}
			return false, fmt.Errorf("email: %s refused RSET: %w", p.cfg.Addr, err) // not the message's fault: next server
		}
	}
	if err := c.c.Mail("<" + env.From + ">"); err != nil {
		return false, s.transactionError(p, "MAIL", err, healthy)
	}
	var accepted []int
	for _, i := range send {
		if err := c.extend(p.cfg.Timeout); err != nil {
			return false, err
		}
		ok, fatal := s.rcptReply(p, env, i, c.c.Rcpt("<"+env.To[i]+">"), results)
		if fatal != nil {
			return false, fatal
		}
		if ok {
			accepted = append(accepted, i)
		}
	}
	if len(accepted) == 0 {
		*healthy = true // the next use starts with RSET
		return false, nil
	}
	if err := c.extend(p.cfg.Timeout); err != nil {
		return false, err
	}
	w, err := c.c.Data()
	if err != nil {
		return false, s.transactionError(p, "DATA", err, healthy)
	}
	_, err = w.Write(data)
	if err == nil {
		err = w.Close() // reads the reply
	}
	var msg string
	if dc, ok := w.(*smtp.DataCloser); ok {
		msg = dc.ServerResponse()
	}
	return false, s.dataReply(p, err, msg, results, accepted, healthy)
}

// rcptReply records one RCPT reply. It reports whether the recipient was
// accepted, and a non-nil error when the transaction cannot go on (a
// network error, or 421: the server is closing).
func (s *Sender) rcptReply(p *pool, env Envelope, i int, err error, results []RecipientResult) (bool, error) {
	at := s.cfg.Now()
	results[i].Server, results[i].At = p.cfg.Addr, at
	if err == nil {
		return true, nil
	}
	te, ok := errors.AsType[*textproto.Error](err)
	if !ok {
		return false, fmt.Errorf("email: %s RCPT: %w", p.cfg.Addr, err) // network: the connection is gone
	}
	r := toReply(te)
	results[i].Reply = &r
	switch {
	case te.Code == 421:
		p.pause(at.Add(s.cfg.ThrottlePause))
		return false, &ReplyError{Command: "RCPT", Server: p.cfg.Addr, Reply: r}
	case throttling(te.Code):
		s.pauseDomain(domainOf(env.To[i]), at.Add(s.cfg.ThrottlePause))
		results[i].Status = StatusDeferred
	case te.Code/100 == 4:
		results[i].Status = StatusDeferred
	default:
		results[i].Status = StatusRefused
	}
	return false, nil
}

// body sends the message after a pipelined 354 and reads the reply.
func (s *Sender) body(p *pool, c *conn, data []byte, results []RecipientResult, accepted []int, healthy *bool) error {
	if err := c.extend(p.cfg.Timeout); err != nil {
		return err
	}
	w := c.c.Text.DotWriter()
	_, err := w.Write(data)
	if err == nil {
		err = w.Close()
	}
	var msg string
	if err == nil {
		_, msg, err = c.c.Text.ReadResponse(250)
	}
	return s.dataReply(p, err, msg, results, accepted, healthy)
}

// dataReply records the final reply to DATA for every accepted recipient.
// A network error here is ambiguous: the server may have the message.
func (s *Sender) dataReply(p *pool, err error, msg string, results []RecipientResult, accepted []int, healthy *bool) error {
	if err != nil {
		if _, ok := errors.AsType[*textproto.Error](err); !ok {
			return fmt.Errorf("email: %s DATA: %w: %w", p.cfg.Addr, errAfterData, err)
		}
		return s.transactionError(p, "DATA", err, healthy)
	}
	*healthy = true
	reply := toReply(&textproto.Error{Code: 250, Msg: msg})
	at := s.cfg.Now()
	for _, i := range accepted {
		r := reply
		results[i].Status, results[i].Reply, results[i].At = StatusSent, &r, at
	}
	return nil
}

func isASCII(env Envelope) bool {
	for _, a := range append([]string{env.From}, env.To...) {
		for i := range len(a) {
			if a[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}

// transactionError turns a failed MAIL or DATA into a ReplyError (pausing
// the server on 421/454) or, for network errors, leaves the connection to
// be closed.
func (s *Sender) transactionError(p *pool, cmd string, err error, healthy *bool) error {
	var te *textproto.Error
	if !errors.As(err, &te) {
		return fmt.Errorf("email: %s %s: %w", p.cfg.Addr, cmd, err)
	}
	if te.Code == 421 || te.Code == 454 {
		p.pause(s.cfg.Now().Add(s.cfg.ThrottlePause))
	} else {
		*healthy = true // a reply, not a broken connection; RSET comes next
	}
	return &ReplyError{Command: cmd, Server: p.cfg.Addr, Reply: toReply(te)}
}

// toReply splits an RFC 3463 enhanced status off the reply text.
func toReply(te *textproto.Error) Reply {
	msg := strings.TrimSpace(te.Msg)
	r := Reply{Code: te.Code, Message: msg}
	if code, rest, ok := strings.Cut(msg, " "); ok && isEnhanced(code, te.Code) {
		r.Enhanced, r.Message = code, strings.TrimSpace(rest)
	} else if isEnhanced(msg, te.Code) {
		r.Enhanced, r.Message = msg, ""
	}
	return r
}

func isEnhanced(s string, code int) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(code/100) {
		return false
	}
	for _, p := range parts[1:] {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 999 {
			return false
		}
	}
	return true
}
