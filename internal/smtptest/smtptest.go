// Package smtptest runs a real SMTP server (github.com/emersion/go-smtp) in
// the test process, so the email transport is tested over TCP against a
// real protocol implementation rather than a mock. Replies can be injected
// per command and recipient (421, 451, 550, ...), connections dropped and
// answers slowed down; the server counts connections and keeps what it
// received.
package smtptest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Reply is an SMTP answer to inject. A nil *Reply accepts the command.
type Reply struct {
	// Code is the reply code, e.g. 451 or 550.
	Code int
	// Enhanced is the RFC 3463 enhanced status, e.g. {5, 1, 1}; zero sends
	// X.0.0 as go-smtp does.
	Enhanced [3]int
	// Message is the reply text.
	Message string
	// Disconnect closes the connection instead of answering.
	Disconnect bool
}

// Disconnect is a Reply that drops the connection.
var Disconnect = &Reply{Disconnect: true}

// Message is one message the server accepted.
type Message struct {
	From string
	To   []string
	Data []byte
}

// Options configures a Server. Zero fields take the documented defaults.
type Options struct {
	// Mail answers MAIL FROM. Defaults to accepting.
	Mail func(from string) *Reply
	// Rcpt answers each RCPT TO. Defaults to accepting.
	Rcpt func(to string) *Reply
	// Data answers the end of DATA, after the message was read. Defaults
	// to accepting (and keeping the message unless Discard).
	Data func(m Message) *Reply
	// Delay is waited before answering MAIL, RCPT and DATA (a slow
	// server). Defaults to 0.
	Delay time.Duration
	// TLS offers STARTTLS with a self-signed certificate (see Server.TLS
	// for a client config that trusts it). Defaults to false.
	TLS bool
	// ImplicitTLS serves TLS from the first byte (SMTPS). Defaults to false.
	ImplicitTLS bool
	// Username and Password, when set, require AUTH PLAIN before MAIL.
	Username, Password string
	// Discard counts messages without keeping them (benchmarks).
	// Defaults to false.
	Discard bool
	// MaxMessageBytes is the SIZE the server announces and enforces.
	// Defaults to 0: no limit.
	MaxMessageBytes int64
}

// Server is a running SMTP server.
type Server struct {
	opts Options
	srv  *smtp.Server
	ln   net.Listener
	done chan struct{}
	quit chan struct{} // closed by Close: ends Delay waits

	conns, active, messages, rsets atomic.Int64

	closeOnce sync.Once

	mu       sync.Mutex
	open     map[*countedConn]struct{}
	received []Message
	tlsCfg   *tls.Config
}

// Start listens on a loopback port and serves until Close.
func Start(opts Options) (*Server, error) {
	s := &Server{opts: opts, done: make(chan struct{}), quit: make(chan struct{})}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "smtptest.localhost"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.MaxMessageBytes = opts.MaxMessageBytes
	srv.MaxRecipients = 1000
	srv.AllowInsecureAuth = true
	srv.ErrorLog = discardLogger{}
	var ln net.Listener
	var err error
	ln, err = (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("smtptest: listen: %w", err)
	}
	if opts.TLS || opts.ImplicitTLS {
		cert, pool, err := selfSigned()
		if err != nil {
			_ = ln.Close()
			return nil, err
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		s.tlsCfg = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if opts.ImplicitTLS {
			ln = tls.NewListener(ln, srv.TLSConfig)
		}
	}
	s.srv, s.ln = srv, ln
	go func() {
		defer close(s.done)
		_ = srv.Serve(countingListener{ln, s})
	}()
	return s, nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// ClientTLS returns a TLS config that trusts the server's certificate, or
// nil when TLS is off.
func (s *Server) ClientTLS() *tls.Config {
	if s.tlsCfg == nil {
		return nil
	}
	return s.tlsCfg.Clone()
}

// Close stops the server and closes every connection.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.quit) })
	err := s.srv.Close()
	// Serve may not have registered the listener yet when Close runs right
	// after Start; closing it here ends Serve either way.
	_ = s.ln.Close()
	<-s.done
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Conns is the number of connections accepted so far.
func (s *Server) Conns() int64 { return s.conns.Load() }

// Active is the number of connections open now.
func (s *Server) Active() int64 { return s.active.Load() }

// Count is the number of messages accepted so far.
func (s *Server) Count() int64 { return s.messages.Load() }

// Resets is the number of RSET commands received.
func (s *Server) Resets() int64 { return s.rsets.Load() }

// Reset forgets the messages received so far (the counters stay).
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received = nil
}

// Messages returns a copy of the accepted messages, in arrival order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.received...)
}

// PerRecipient answers RCPT TO from a script: each recipient's replies are
// used in turn, one per RCPT for that address, then it is accepted. Safe
// for concurrent use.
func PerRecipient(script map[string][]*Reply) func(to string) *Reply {
	var mu sync.Mutex
	left := make(map[string][]*Reply, len(script))
	for k, v := range script {
		left[strings.ToLower(k)] = v
	}
	return func(to string) *Reply {
		mu.Lock()
		defer mu.Unlock()
		k := strings.ToLower(to)
		rs := left[k]
		if len(rs) == 0 {
			return nil
		}
		left[k] = rs[1:]
		return rs[0]
	}
}

type countingListener struct {
	net.Listener
	s *Server
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.conns.Add(1)
	l.s.active.Add(1)
	cc := &countedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	if l.s.open == nil {
		l.s.open = map[*countedConn]struct{}{}
	}
	l.s.open[cc] = struct{}{}
	l.s.mu.Unlock()
	return cc, nil
}

type countedConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.s.active.Add(-1)
		c.s.mu.Lock()
		delete(c.s.open, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// DropConnections closes every open connection from the server side, as a
// server does with connections idle too long.
func (s *Server) DropConnections() {
	s.mu.Lock()
	conns := make([]*countedConn, 0, len(s.open))
	for c := range s.open {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: s, conn: c, authed: s.opts.Username == ""}, nil
}

type session struct {
	s      *Server
	conn   *smtp.Conn
	authed bool
	from   string
	to     []string
	// dataDone marks that DATA ran: go-smtp then calls Reset itself,
	// which must not be counted as the client's RSET.
	dataDone bool
}

func (ss *session) answer(r *Reply) error {
	if r == nil {
		return nil
	}
	if r.Disconnect {
		_ = ss.conn.Conn().Close()
		return errors.New("smtptest: disconnected")
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(r.Enhanced), Message: r.Message}
}

func (ss *session) wait() {
	if ss.s.opts.Delay > 0 {
		t := time.NewTimer(ss.s.opts.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ss.s.quit:
		}
	}
}

func (ss *session) AuthMechanisms() []string {
	if ss.s.opts.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, username, password string) error {
		if username != ss.s.opts.Username || password != ss.s.opts.Password {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		ss.authed = true
		return nil
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	ss.wait()
	if !ss.authed {
		return smtp.ErrAuthRequired
	}
	ss.dataDone = false
	ss.from, ss.to = from, nil
	if ss.s.opts.Mail != nil {
		return ss.answer(ss.s.opts.Mail(from))
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.wait()
	if ss.s.opts.Rcpt != nil {
		if err := ss.answer(ss.s.opts.Rcpt(to)); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	ss.dataDone = true
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.wait()
	m := Message{From: ss.from, To: ss.to, Data: data}
	if ss.s.opts.Data != nil {
		if err := ss.answer(ss.s.opts.Data(m)); err != nil {
			return err
		}
	}
	ss.s.messages.Add(1)
	if !ss.s.opts.Discard {
		ss.s.mu.Lock()
		ss.s.received = append(ss.s.received, m)
		ss.s.mu.Unlock()
	}
	return nil
}

// Reset is called by go-smtp for RSET and after every DATA; the call that
// follows a completed DATA is not the client's.
func (ss *session) Reset() {
	if ss.dataDone {
		ss.dataDone = false
	} else {
		ss.s.rsets.Add(1)
	}
	ss.from, ss.to = "", nil
}

func (ss *session) Logout() error { return nil }

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// selfSigned makes a throwaway certificate for 127.0.0.1 and a pool that
// trusts it.
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("smtptest: key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "smtptest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("smtptest: certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("smtptest: certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}
