package email

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
)

// pool holds the persistent connections to one SMTP server. Its size is
// the server's connection cap: a sender never has more connections open to
// the server than there are pool slots, whatever the job concurrency.
type pool struct {
	cfg    ServerConfig
	dialer *gomail.Client // dials, negotiates TLS and authenticates; never sends
	tlsCfg *tls.Config
	slots  chan struct{} // one token per connection that may be open

	mu     sync.Mutex
	idle   []*conn // most recently used last: reuse the warmest connection
	closed bool

	// stepwise turns pipelining off even when offered (tests cover both).
	stepwise bool

	pausedUntil atomic.Int64 // unix nanos; a 421/454 pauses the whole server
	dials       atomic.Int64
}

type conn struct {
	c        *smtp.Client
	raw      net.Conn // the TCP (or implicit TLS) connection under c
	lastUsed time.Time
	reused   bool

	// go-mail's smtp.Client holds its mutex while it waits for a reply,
	// so its UpdateDeadline cannot interrupt a blocked command; deadlines
	// are set on raw instead, and interrupted stops later extensions.
	mu          sync.Mutex
	interrupted bool
}

// extend sets the deadline of the next command, unless interrupted.
func (c *conn) extend(d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.interrupted {
		return context.Canceled
	}
	return c.raw.SetDeadline(time.Now().Add(d))
}

// interrupt makes the blocked and every later read or write fail at once.
func (c *conn) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.interrupted = true
	_ = c.raw.SetDeadline(time.Unix(1, 0))
}

func newPool(sc ServerConfig) (*pool, error) {
	host, port, err := splitHostPort(sc.Addr)
	if err != nil {
		return nil, err
	}
	opts := []gomail.Option{
		gomail.WithPort(port),
		gomail.WithTimeout(sc.Timeout),
		gomail.WithHELO(sc.HELO),
		gomail.WithoutNoop(),
	}
	tlsCfg := sc.TLSConfig
	if tlsCfg == nil {
		tlsCfg = defaultTLSConfig(host)
	}
	p := &pool{cfg: sc, tlsCfg: tlsCfg, slots: make(chan struct{}, sc.PoolSize)}
	opts = append(opts, gomail.WithTLSConfig(tlsCfg), gomail.WithDialContextFunc(p.dial))
	switch sc.TLS {
	case TLSImplicit:
		// p.dial speaks TLS from the first byte; there is no STARTTLS.
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	case TLSStartTLS:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	case TLSOpportunistic:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSOpportunistic))
	case TLSNone:
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	}
	if sc.Username != "" {
		// An explicit mechanism: go-mail's auto-discovery decides on
		// "encrypted" from its own dialer, which p.dial replaces. PLAIN
		// itself refuses to send the password over a connection that is
		// not TLS (except to localhost).
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthType(sc.AuthMechanism)),
			gomail.WithUsername(sc.Username), gomail.WithPassword(sc.Password))
	}
	dialer, err := gomail.NewClient(host, opts...)
	if err != nil {
		return nil, fmt.Errorf("email: server %s: %w", sc.Addr, err)
	}
	p.dialer = dialer
	return p, nil
}

type dialedKey struct{}

// dial opens the TCP (or, for implicit TLS, TLS) connection for go-mail
// and remembers it in the context's holder: go-mail does not close the
// connection when the greeting, STARTTLS or AUTH fail, so get does.
func (p *pool) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := &net.Dialer{Timeout: p.cfg.Timeout}
	var c net.Conn
	var err error
	if p.cfg.TLS == TLSImplicit {
		c, err = (&tls.Dialer{NetDialer: nd, Config: p.tlsCfg}).DialContext(ctx, network, addr)
	} else {
		c, err = nd.DialContext(ctx, network, addr)
	}
	if err == nil {
		if h, ok := ctx.Value(dialedKey{}).(*net.Conn); ok {
			*h = c
		}
	}
	return c, err
}

// get returns a connection, reusing an idle one when it has not idled past
// IdleTimeout. It waits for a free slot (the connection cap) until ctx ends.
func (p *pool) get(ctx context.Context, now time.Time) (*conn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var stale []*conn
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.slots
		return nil, ErrClosed
	}
	var c *conn
	for len(p.idle) > 0 {
		last := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if now.Sub(last.lastUsed) < p.cfg.IdleTimeout {
			c = last
			break
		}
		stale = append(stale, last)
	}
	p.mu.Unlock()
	for _, s := range stale {
		_ = s.c.Close() // the server likely dropped it already; QUIT would only wait
	}
	if c != nil {
		c.reused = true
		return c, nil
	}
	c, err := p.dial1(ctx)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

// dial1 opens one ready connection: greeted, TLS and AUTH done.
func (p *pool) dial1(ctx context.Context) (*conn, error) {
	p.dials.Add(1)
	var raw net.Conn
	sc, err := p.dialer.DialToSMTPClientWithContext(context.WithValue(ctx, dialedKey{}, &raw))
	if err != nil {
		if raw != nil {
			_ = raw.Close()
		}
		return nil, err
	}
	return &conn{c: sc, raw: raw}, nil
}

// put returns c to the pool, or closes it when it is broken (or its
// transaction state is unknown) or the pool is closed.
func (p *pool) put(c *conn, healthy bool, now time.Time) {
	defer func() { <-p.slots }()
	p.mu.Lock()
	if healthy && !p.closed && !c.interrupted {
		c.lastUsed = now
		p.idle = append(p.idle, c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if c.c != nil {
		_ = c.c.Close()
	}
}

// close QUITs the idle connections and refuses new ones. Connections in use
// are closed when they are put back.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range idle {
		wg.Go(func() {
			_ = c.c.UpdateDeadline(time.Second)
			if err := c.c.Quit(); err != nil {
				_ = c.c.Close()
			}
		})
	}
	wg.Wait()
}

func (p *pool) paused(now time.Time) (time.Time, bool) {
	until := time.Unix(0, p.pausedUntil.Load())
	return until, now.Before(until)
}

func (p *pool) pause(until time.Time) {
	for {
		cur := p.pausedUntil.Load()
		if until.UnixNano() <= cur || p.pausedUntil.CompareAndSwap(cur, until.UnixNano()) {
			return
		}
	}
}
