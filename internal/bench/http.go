package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/httpapi"
)

// HTTPResult is `herald bench http`'s JSON line.
type HTTPResult struct {
	Scenario     string  `json:"scenario"`
	Requests     int     `json:"requests"`
	Conns        int     `json:"conns"`
	Batch        int     `json:"batch"`
	RequestsPerS float64 `json:"requests_per_s"`
	JobsPerS     float64 `json:"jobs_per_s"`
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	Failed       int64   `json:"failed"`
}

// HTTP measures the enqueue API over loopback TCP: conns keep-alive clients
// send requests POSTs, each acknowledged only once durable. batch 1 uses
// POST /v1/jobs; larger batches use POST /v1/jobs/batch. The server runs
// in this process (the real API handler over a real client and store), so
// the load generator and the server share the machine, as with wrk.
func HTTP(ctx context.Context, o Options, requests, conns, batch int) (HTTPResult, error) {
	res := HTTPResult{Scenario: "http", Requests: requests, Conns: conns, Batch: batch}
	if requests <= 0 || conns <= 0 || batch <= 0 {
		return res, fmt.Errorf("%w: requests, conns and batch must be positive", ErrBadInput)
	}
	c, stop, err := o.client(ctx, cmp.Or(o.Workers, 1000), func(context.Context, *herald.Job) error { return nil })
	if err != nil {
		return res, err
	}
	defer stop()
	api := httpapi.New(c, httpapi.Options{Logger: o.Logger})
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	path := "/v1/jobs"
	if batch > 1 {
		path += "/batch"
	}
	addr := ln.Addr().String()
	lat := make([]time.Duration, requests)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Go(func() {
			// Each connection is a plain keep-alive HTTP/1.1 client over its
			// own TCP connection, as wrk's are: net/http's Transport costs
			// two goroutines per connection and a hand-off per request, CPU
			// that this machine's server would otherwise have.
			c := &loadConn{addr: addr, path: path}
			defer c.close()
			var buf bytes.Buffer
			for {
				i := int(next.Add(1) - 1)
				if i >= requests || ctx.Err() != nil {
					return
				}
				buf.Reset()
				body(&buf, i, batch)
				t0 := time.Now()
				status, err := c.post(ctx, buf.Bytes())
				if err != nil || status != http.StatusCreated {
					failed.Add(1)
					continue
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	res.Failed = failed.Load()
	res.RequestsPerS = float64(requests) / elapsed.Seconds()
	res.JobsPerS = res.RequestsPerS * float64(batch)
	res.P50Ms = percentile(lat, 50)
	res.P99Ms = percentile(lat, 99)
	o.printf("%d requests × %d jobs over %d connections in %s: %.0f req/s, %.0f jobs/s, p50 %.2f ms, p99 %.2f ms, %d failed",
		requests, batch, conns, elapsed.Round(time.Millisecond), res.RequestsPerS, res.JobsPerS, res.P50Ms, res.P99Ms, res.Failed)
	if res.Failed > 0 {
		return res, fmt.Errorf("%d requests failed", res.Failed)
	}
	return res, nil
}

// body writes request i's JSON: one job, or a batch of them, over 1,000 keys.
func body(buf *bytes.Buffer, i, batch int) {
	job := func(n int) {
		buf.WriteString(`{"kind":"bench","key":"k`)
		buf.WriteString(strconv.Itoa(n % 1000))
		buf.WriteString(`","payload":{"n":`)
		buf.WriteString(strconv.Itoa(n))
		buf.WriteString(`}}`)
	}
	if batch == 1 {
		job(i)
		return
	}
	buf.WriteString(`{"jobs":[`)
	for j := range batch {
		if j > 0 {
			buf.WriteByte(',')
		}
		job(i*batch + j)
	}
	buf.WriteString(`]}`)
}

// loadConn is one keep-alive connection of the load generator. It writes
// requests itself and reads answers with http.ReadResponse; on any error it
// drops the connection, and the next request dials again.
type loadConn struct {
	addr, path string
	conn       net.Conn
	r          *bufio.Reader
	stop       func() bool // stops the AfterFunc that closes conn on cancel
	head       []byte
}

// post sends body as one POST and returns the answer's status once the
// whole answer is read.
func (c *loadConn) post(ctx context.Context, body []byte) (int, error) {
	if c.conn == nil {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0, err
		}
		c.conn, c.r = conn, bufio.NewReaderSize(conn, 16<<10)
		// A canceled run unblocks a connection waiting for its answer.
		c.stop = context.AfterFunc(ctx, func() { _ = conn.Close() })
	}
	c.head = append(c.head[:0], "POST "...)
	c.head = append(c.head, c.path...)
	c.head = append(c.head, " HTTP/1.1\r\nHost: "...)
	c.head = append(c.head, c.addr...)
	c.head = append(c.head, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	c.head = strconv.AppendInt(c.head, int64(len(body)), 10)
	c.head = append(c.head, "\r\n\r\n"...)
	bufs := net.Buffers{c.head, body}
	if _, err := bufs.WriteTo(c.conn); err != nil {
		c.close()
		return 0, err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		c.close()
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil || resp.Close {
		c.close()
	}
	return resp.StatusCode, err
}

func (c *loadConn) close() {
	if c.conn != nil {
		c.stop()
		_ = c.conn.Close()
		c.conn = nil
	}
}
