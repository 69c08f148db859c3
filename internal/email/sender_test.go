package email

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldmq/herald/internal/smtptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startServer(t *testing.T, o smtptest.Options) *smtptest.Server {
	t.Helper()
	srv, err := smtptest.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

func newSender(t *testing.T, cfg Config) *Sender {
	t.Helper()
	s, err := NewSender(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func plain(addr string, poolSize int) ServerConfig {
	return ServerConfig{Addr: addr, TLS: TLSNone, PoolSize: poolSize, Timeout: 5 * time.Second}
}

var testData = []byte("Subject: hi\r\nMessage-ID: <herald.1@example.com>\r\n\r\nhello\r\n")

// TestPooling: many messages from many goroutines travel over at most
// PoolSize connections, which are reused (RSET between messages) rather than
// reopened.
func TestPooling(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name              string
		messages, workers int
		poolSize          int
	}{
		{"one connection, sequential", 50, 1, 1},
		{"four connections, 16 senders", 400, 16, 4},
		{"pool larger than demand", 100, 2, 10},
	}
	for _, tt := range tests {
		for _, stepwise := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stepwise=%v", tt.name, stepwise), func(t *testing.T) {
				t.Parallel()
				srv := startServer(t, smtptest.Options{Discard: true})
				s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), tt.poolSize)}})
				s.pools[0].stepwise = stepwise
				var wg sync.WaitGroup
				jobs := make(chan int)
				errs := make(chan error, tt.messages)
				for range tt.workers {
					wg.Go(func() {
						for i := range jobs {
							res, err := s.Send(t.Context(), Envelope{From: "app@example.com", To: []string{fmt.Sprintf("u%d@example.org", i)}}, testData)
							if err == nil && res[0].Status != StatusSent {
								err = fmt.Errorf("status %s", res[0].Status)
							}
							if err != nil {
								errs <- err
							}
						}
					})
				}
				for i := range tt.messages {
					jobs <- i
				}
				close(jobs)
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				if got := srv.Count(); got != int64(tt.messages) {
					t.Errorf("server got %d messages, want %d", got, tt.messages)
				}
				maxConns := int64(min(tt.poolSize, tt.workers))
				if got := srv.Conns(); got < 1 || got > maxConns {
					t.Errorf("%d connections for %d messages; want 1..%d", got, tt.messages, maxConns)
				}
				if got := s.Dials(); got != srv.Conns() {
					t.Errorf("sender dialed %d times, server saw %d connections", got, srv.Conns())
				}
				// Every reuse starts with RSET.
				if want := int64(tt.messages) - srv.Conns(); srv.Resets() != want {
					t.Errorf("RSETs = %d, want %d (messages - connections)", srv.Resets(), want)
				}
			})
		}
	}
}

// TestConnectionCap: a slow server with more concurrent senders than pool
// slots never sees more connections than the cap.
func TestConnectionCap(t *testing.T) {
	t.Parallel()
	srv := startServer(t, smtptest.Options{Discard: true, Delay: 5 * time.Millisecond})
	s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 3)}})
	var peak int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			if _, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{fmt.Sprintf("r%d@example.org", i)}}, testData); err != nil {
				t.Error(err)
			}
			mu.Lock()
			peak = max(peak, srv.Active())
			mu.Unlock()
		})
	}
	wg.Wait()
	if peak > 3 || srv.Conns() > 3 {
		t.Errorf("peak %d active, %d total connections; cap is 3", peak, srv.Conns())
	}
}

func TestIdleTimeoutReconnects(t *testing.T) {
	t.Parallel()
	srv := startServer(t, smtptest.Options{Discard: true})
	now := time.Unix(1_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	sc := plain(srv.Addr(), 1)
	sc.IdleTimeout = time.Minute
	s := newSender(t, Config{Servers: []ServerConfig{sc}, Now: clock})
	send := func() {
		if _, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData); err != nil {
			t.Fatal(err)
		}
	}
	send()
	send()
	if srv.Conns() != 1 {
		t.Fatalf("conns = %d after two quick sends, want 1", srv.Conns())
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	send()
	if srv.Conns() != 2 {
		t.Errorf("conns = %d after idling past the timeout, want 2", srv.Conns())
	}
}

// TestServerDroppedIdleConnection: a pooled connection the server closed
// is detected by RSET and replaced, without failing the message.
func TestServerDroppedIdleConnection(t *testing.T) {
	t.Parallel()
	for _, stepwise := range []bool{false, true} {
		t.Run(fmt.Sprintf("stepwise=%v", stepwise), func(t *testing.T) {
			t.Parallel()
			testDroppedIdleConnection(t, stepwise)
		})
	}
}

func testDroppedIdleConnection(t *testing.T, stepwise bool) {
	t.Helper()
	srv := startServer(t, smtptest.Options{})
	s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 1)}})
	s.pools[0].stepwise = stepwise
	if _, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData); err != nil {
		t.Fatal(err)
	}
	srv.DropConnections()
	res, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"c@example.org"}}, testData)
	if err != nil || res[0].Status != StatusSent {
		t.Fatalf("send on a dropped pooled connection: %v %+v", err, res)
	}
	if srv.Count() != 2 || srv.Conns() != 2 {
		t.Errorf("messages %d, conns %d; want 2 and 2", srv.Count(), srv.Conns())
	}
}

func TestFailover(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		primary   smtptest.Options
		down      bool // the primary refuses connections
		wantFirst int64
	}{
		{"primary unreachable", smtptest.Options{}, true, 0},
		{"primary answers 421 to MAIL", smtptest.Options{Mail: func(string) *smtptest.Reply {
			return &smtptest.Reply{Code: 421, Enhanced: [3]int{4, 3, 2}, Message: "closing"}
		}}, false, 0},
		{"primary drops the connection at RCPT", smtptest.Options{Rcpt: func(string) *smtptest.Reply { return smtptest.Disconnect }}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			primary := startServer(t, tt.primary)
			primaryAddr := primary.Addr()
			if tt.down {
				_ = primary.Close()
			}
			backup := startServer(t, smtptest.Options{})
			s := newSender(t, Config{Servers: []ServerConfig{plain(primaryAddr, 2), plain(backup.Addr(), 2)}})
			res, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != StatusSent || res[0].Server != backup.Addr() {
				t.Errorf("result %+v; want sent via the backup %s", res[0], backup.Addr())
			}
			if primary.Count() != tt.wantFirst || backup.Count() != 1 {
				t.Errorf("primary got %d, backup %d", primary.Count(), backup.Count())
			}
		})
	}
}

// TestThrottling: 421 pauses the server, 450/451/452 pause the recipient's
// domain; paused targets are not contacted until the pause ends.
func TestThrottling(t *testing.T) {
	t.Parallel()
	t.Run("421 pauses the only server", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, smtptest.Options{Mail: func(string) *smtptest.Reply { return &smtptest.Reply{Code: 421, Message: "slow down"} }})
		now := time.Unix(1_000_000, 0)
		s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 1)}, ThrottlePause: time.Minute, Now: func() time.Time { return now }})
		_, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData)
		var re *ReplyError
		if !errors.As(err, &re) || re.Code != 421 {
			t.Fatalf("first send: %v; want the 421 reply", err)
		}
		conns := srv.Conns()
		_, err = s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData)
		var te *ThrottledError
		if !errors.As(err, &te) || !errors.Is(err, ErrThrottled) || !te.Until.Equal(now.Add(time.Minute)) {
			t.Fatalf("second send: %v; want throttled until %s", err, now.Add(time.Minute))
		}
		if srv.Conns() != conns {
			t.Error("a paused server was contacted")
		}
	})
	for _, code := range []int{450, 451, 452} {
		t.Run(fmt.Sprintf("%d pauses the domain", code), func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, smtptest.Options{Rcpt: smtptest.PerRecipient(map[string][]*smtptest.Reply{
				"slow@throttled.example": {{Code: code, Enhanced: [3]int{4, 7, 1}, Message: "try later"}},
			})})
			now := time.Unix(1_000_000, 0)
			s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 1)}, ThrottlePause: time.Minute, Now: func() time.Time { return now }})
			res, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"slow@throttled.example", "ok@fine.example"}}, testData)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != StatusDeferred || res[0].Reply.Code != code || res[0].Reply.Enhanced != "4.7.1" || res[1].Status != StatusSent {
				t.Fatalf("results %+v %+v", res[0], res[1])
			}
			if got := s.DomainPausedUntil("other@THROTTLED.example"); !got.Equal(now.Add(time.Minute)) {
				t.Errorf("domain paused until %v, want %v", got, now.Add(time.Minute))
			}
			// Same domain again: not contacted while paused.
			_, err = s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"slow@throttled.example"}}, testData)
			if !errors.Is(err, ErrThrottled) {
				t.Errorf("send to a paused domain: %v; want ErrThrottled", err)
			}
		})
	}
}

// TestReplies: per-recipient and per-transaction replies are reported with
// their code and enhanced status.
func TestReplies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		opts       smtptest.Options
		rcpt       map[string][]*smtptest.Reply // a fresh script per subtest
		wantErr    string                       // substring; "" for no transaction error
		wantStatus []string
		wantCode   int
	}{
		{"partial refusal", smtptest.Options{}, map[string][]*smtptest.Reply{
			"gone@example.org": {{Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "no such user"}},
		}, "", []string{StatusSent, StatusRefused}, 0},
		{"temporary recipient failure", smtptest.Options{}, map[string][]*smtptest.Reply{
			"gone@example.org": {{Code: 441, Enhanced: [3]int{4, 4, 1}, Message: "later"}},
		}, "", []string{StatusSent, StatusDeferred}, 0},
		{"MAIL 550", smtptest.Options{Mail: func(string) *smtptest.Reply {
			return &smtptest.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Message: "sender rejected"}
		}}, nil, "550 5.7.1 sender rejected", []string{StatusDeferred, StatusDeferred}, 550},
		{"DATA 554", smtptest.Options{Data: func(smtptest.Message) *smtptest.Reply {
			return &smtptest.Reply{Code: 554, Enhanced: [3]int{5, 6, 0}, Message: "content rejected"}
		}}, nil, "554 5.6.0 content rejected", []string{StatusDeferred, StatusDeferred}, 554},
		{"DATA 451", smtptest.Options{Data: func(smtptest.Message) *smtptest.Reply {
			return &smtptest.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Message: "local error"}
		}}, nil, "451 4.3.0 local error", []string{StatusDeferred, StatusDeferred}, 451},
	}
	for _, tt := range tests {
		for _, stepwise := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stepwise=%v", tt.name, stepwise), func(t *testing.T) {
				t.Parallel()
				opts := tt.opts
				if tt.rcpt != nil {
					opts.Rcpt = smtptest.PerRecipient(tt.rcpt)
				}
				srv := startServer(t, opts)
				s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 1)}})
				s.pools[0].stepwise = stepwise
				// Twice on one connection: the second transaction follows
				// whatever the first left behind.
				_, _ = s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"warmup@example.org"}}, testData)
				srv.Reset()
				res, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"ok@example.org", "gone@example.org"}}, testData)
				if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				var re *ReplyError
				if tt.wantCode != 0 && (!errors.As(err, &re) || re.Code != tt.wantCode) {
					t.Errorf("err %v is not a ReplyError %d", err, tt.wantCode)
				}
				for i, want := range tt.wantStatus {
					if res[i].Status != want {
						t.Errorf("recipient %d: status %s, want %s (%+v)", i, res[i].Status, want, res[i].Reply)
					}
				}
				if tt.name == "partial refusal" {
					if r := res[1].Reply; r == nil || r.Code != 550 || r.Enhanced != "5.1.1" || r.Message != "no such user" {
						t.Errorf("refusal reply %+v", r)
					}
					msgs := srv.Messages()
					if len(msgs) != 1 || len(msgs[0].To) != 1 || msgs[0].To[0] != "ok@example.org" {
						t.Errorf("server received %+v; want one message to ok@example.org", msgs)
					}
				}
				// The connection is still usable after whatever happened.
				if res, err := s.Send(t.Context(), Envelope{From: "b@example.com", To: []string{"ok@example.org"}}, testData); tt.wantCode == 0 && (err != nil || res[0].Status != StatusSent) {
					t.Errorf("next message: %v %+v", err, res)
				}
			})
		}
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	srv := startServer(t, smtptest.Options{Discard: true})
	s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 2)}, DomainRate: 20, DomainBurst: 1})
	start := time.Now()
	for range 6 {
		if _, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"x@one.example"}}, testData); err != nil {
			t.Fatal(err)
		}
	}
	// 6 messages to one domain at 20/s with burst 1: at least 5 gaps of 50 ms.
	if d := time.Since(start); d < 240*time.Millisecond {
		t.Errorf("6 messages to one domain took %s; the 20/s limit allows no less than 250ms", d)
	}
	start = time.Now()
	for i := range 6 {
		if _, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{fmt.Sprintf("x@d%d.example", i)}}, testData); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("6 messages to 6 domains took %s; the per-domain limit should not serialize them", d)
	}
}

func TestCancelInterruptsSlowServer(t *testing.T) {
	t.Parallel()
	srv := startServer(t, smtptest.Options{Delay: 2 * time.Second})
	s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 1)}})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Send(ctx, Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData)
	if err == nil {
		t.Fatal("send to a slow server succeeded before its deadline")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancelled send returned after %s", d)
	}
}

func TestTLSAndAuth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    smtptest.Options
		mode    string
		user    string
		pass    string
		wantErr bool
	}{
		{"starttls with auth", smtptest.Options{TLS: true, Username: "u", Password: "p"}, TLSStartTLS, "u", "p", false},
		{"implicit tls with auth", smtptest.Options{ImplicitTLS: true, Username: "u", Password: "p"}, TLSImplicit, "u", "p", false},
		{"wrong password", smtptest.Options{TLS: true, Username: "u", Password: "p"}, TLSStartTLS, "u", "nope", true},
		{"starttls required but not offered", smtptest.Options{}, TLSStartTLS, "", "", true},
		{"opportunistic without tls", smtptest.Options{}, TLSOpportunistic, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, tt.opts)
			sc := ServerConfig{Addr: srv.Addr(), TLS: tt.mode, TLSConfig: srv.ClientTLS(), Username: tt.user, Password: tt.pass, Timeout: 5 * time.Second}
			s := newSender(t, Config{Servers: []ServerConfig{sc}})
			_, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && srv.Count() != 1 {
				t.Errorf("server got %d messages", srv.Count())
			}
		})
	}
}

func TestMessageTooLarge(t *testing.T) {
	t.Parallel()
	srv := startServer(t, smtptest.Options{})
	s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 1)}, MaxMessageBytes: 100})
	_, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, make([]byte, 101))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if srv.Conns() != 0 {
		t.Error("an oversized message was sent to the server")
	}
}

func TestProceedAbandons(t *testing.T) {
	t.Parallel()
	srv := startServer(t, smtptest.Options{})
	s := newSender(t, Config{Servers: []ServerConfig{plain(srv.Addr(), 1)}})
	res, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}, Proceed: func() bool { return false }}, testData)
	if !errors.Is(err, ErrAbandoned) || res[0].Status != StatusDeferred {
		t.Fatalf("err = %v, result %+v; want ErrAbandoned and the recipient deferred", err, res[0])
	}
	if srv.Count() != 0 {
		t.Error("an abandoned message reached the server")
	}
	// The untouched connection is reused.
	if _, err := s.Send(t.Context(), Envelope{From: "a@example.com", To: []string{"b@example.org"}}, testData); err != nil {
		t.Fatal(err)
	}
	if srv.Conns() != 1 || srv.Count() != 1 {
		t.Errorf("conns %d, messages %d; want 1 and 1", srv.Conns(), srv.Count())
	}
}

// TestFailoverForgetsFirstServersAnswers: recipients answered by a server
// that then failed are judged by the server that took the message.
func TestFailoverForgetsFirstServersAnswers(t *testing.T) {
	t.Parallel()
	primary := startServer(t, smtptest.Options{Rcpt: func(to string) *smtptest.Reply {
		if to == "a@example.org" {
			return &smtptest.Reply{Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "not here"}
		}
		return smtptest.Disconnect
	}})
	backup := startServer(t, smtptest.Options{})
	s := newSender(t, Config{Servers: []ServerConfig{plain(primary.Addr(), 1), plain(backup.Addr(), 1)}})
	s.pools[0].stepwise = true // the refusal arrives before the disconnect
	res, err := s.Send(t.Context(), Envelope{From: "x@example.com", To: []string{"a@example.org", "b@example.org"}}, testData)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Status != StatusSent || r.Server != backup.Addr() || r.Reply == nil || r.Reply.Code != 250 {
			t.Errorf("%s: %s via %s (%+v); want sent via the backup", r.Address, r.Status, r.Server, r.Reply)
		}
	}
}
