package httpapi

import (
	"bufio"
	"context"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// listen serves b's handler on a real loopback listener with the
// production http.Server (NewHTTPServer) and timeouts t.
func listen(t *testing.T, b *testBundle, to Timeouts) string {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTPServer(b.server.Handler(), to, log.New(io.Discard, "", 0))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
		<-done
	})
	return ln.Addr().String()
}

// send writes r to addr over a fresh connection while reading the answer,
// and records it. A raw connection rather than http.Client: a server that
// refuses a large body answers before reading it and hangs up, which the
// client reports as a write error instead of the answer.
func send(t *testing.T, addr string, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	r.URL.Scheme, r.URL.Host, r.Host, r.RequestURI = "http", addr, addr, ""
	r.Close = true
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close() //nolint:errcheck // test connection
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	go func() { _ = r.Write(conn) }() // fails once the server hangs up: fine
	resp, err := http.ReadResponse(bufio.NewReader(conn), r)
	if err != nil {
		t.Fatalf("%s %s: no answer: %v", r.Method, r.URL.Path, err)
	}
	defer resp.Body.Close() //nolint:errcheck // read fully below
	rec := httptest.NewRecorder()
	maps.Copy(rec.Header(), resp.Header)
	rec.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(rec, resp.Body); err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	return rec
}

func stillServes(t *testing.T, b *testBundle, addr string) {
	t.Helper()
	if rec := send(t, addr, b.newRequest(http.MethodGet, "/v1/stats", nil)); rec.Code != http.StatusOK {
		t.Errorf("GET /v1/stats afterwards = %d %s", rec.Code, rec.Body)
	}
}

// TestHostileRequestsOverTCP sends every hostile request of
// TestHostileRequests through a real listener and the production
// http.Server, so that net/http's own limits and the size limits on a real
// body stream are part of what is checked.
func TestHostileRequestsOverTCP(t *testing.T) {
	t.Parallel()
	for _, tt := range hostileCases() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.options())
			if tt.prepare != nil {
				tt.prepare(b)
			}
			addr := listen(t, b, Timeouts{})
			rec := send(t, addr, tt.request(b))
			checkError(t, rec, tt.status, tt.code, tt.field)
			if jobs := b.storedJobs(t); len(jobs) != 0 {
				t.Errorf("%d jobs stored after a refused request", len(jobs))
			}
			stillServes(t, b, addr)
		})
	}
}

// TestHostileConnections speaks raw HTTP/1.1 to a real listener: requests
// net/http itself must refuse with a 4xx, and clients that are slow on
// purpose (slowloris), which the server timeouts must cut off. After each
// the server answers a normal request.
func TestHostileConnections(t *testing.T) {
	t.Parallel()
	const short = 300 * time.Millisecond
	tests := []struct {
		name string
		// raw is written at once; trickle, if set, is then written one byte
		// every 50ms for up to 5s.
		raw, trickle string
		// status is the expected answer's status; 0 accepts a hang-up or
		// any 4xx (net/http answers a header timeout with 400 or nothing).
		status int
	}{
		{name: "NUL byte in a header", raw: "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", status: 400},
		{name: "NUL byte in the path", raw: "GET /v1/jobs/\x00 HTTP/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "invalid UTF-8 in the path", raw: "GET /v1/keys/\xff\xfe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken + "\r\n\r\n", status: 400},
		{name: "huge Content-Length", raw: "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999999999999999999\r\n\r\n", status: 400},
		{name: "Content-Length over the limit", raw: "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken + "\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n{", status: 413},
		{name: "headers over 64 KiB", raw: "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 80<<10) + "\r\n\r\n", status: 431},
		{name: "garbage chunked body", raw: "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken + "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", status: 400},
		{name: "not HTTP at all", raw: "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", status: 400},
		{name: "slowloris headers", raw: "GET /healthz HTTP/1.1\r\nHost: x\r\n", trickle: strings.Repeat("X-Slow: a\r\n", 20)},
		{name: "slow body", raw: "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken + "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n", trickle: strings.Repeat(" ", 100), status: 408},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Options{Tokens: []string{testToken}, MaxRequestBytes: hostileLimit})
			addr := listen(t, b, Timeouts{ReadHeader: short, Read: 2 * short, Write: 5 * time.Second, Idle: 5 * time.Second})
			conn, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close() //nolint:errcheck // test connection
			began := time.Now()
			if _, err := io.WriteString(conn, tt.raw); err != nil {
				t.Fatal(err)
			}
			if tt.trickle != "" {
				go func() {
					for i := range len(tt.trickle) {
						time.Sleep(50 * time.Millisecond)
						if _, err := conn.Write([]byte{tt.trickle[i]}); err != nil {
							return // the server hung up: the point
						}
					}
				}()
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			took := time.Since(began)
			switch {
			case tt.status == 0:
				if err == nil {
					_ = resp.Body.Close()
					if resp.StatusCode/100 != 4 {
						t.Fatalf("got %s, want a 4xx or a hang-up for a slow client", resp.Status)
					}
					break
				}
				if ne, ok := err.(net.Error); ok && ne.Timeout() { //nolint:errorlint // the net.Error interface
					t.Fatalf("the server kept a slowloris client past 10s: %v", err)
				}
			case err != nil:
				t.Fatalf("no answer after %s: %v, want %d", took, err, tt.status)
			default:
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != tt.status {
					t.Errorf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
				}
			}
			if tt.trickle != "" && took > 3*time.Second {
				t.Errorf("a slow client held the connection %s; the timeouts are %s (headers) and %s (request)", took, short, 2*short)
			}
			stillServes(t, b, addr)
		})
	}
}

// The production server sets every timeout: a zero one would let slow
// clients hold connections forever.
func TestNewHTTPServerSetsTimeouts(t *testing.T) {
	t.Parallel()
	srv := NewHTTPServer(http.NotFoundHandler(), Timeouts{}, nil)
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": srv.ReadHeaderTimeout, "ReadTimeout": srv.ReadTimeout,
		"WriteTimeout": srv.WriteTimeout, "IdleTimeout": srv.IdleTimeout,
	} {
		if d <= 0 {
			t.Errorf("%s = %s, want a bound", name, d)
		}
	}
	if srv.ReadHeaderTimeout > 10*time.Second {
		t.Errorf("ReadHeaderTimeout = %s: a slowloris client may hold a connection that long per header", srv.ReadHeaderTimeout)
	}
	if srv.MaxHeaderBytes != MaxHeaderBytes {
		t.Errorf("MaxHeaderBytes = %d, want %d", srv.MaxHeaderBytes, MaxHeaderBytes)
	}
}
