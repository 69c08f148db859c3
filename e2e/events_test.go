package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/heraldmq/herald/internal/history"
)

// receiver is the application's webhook endpoint: it records every
// delivery (start, end, outcome) for the history checker.
type receiver struct {
	rec      *history.Recorder
	work     time.Duration
	lastEnd  atomic.Int64
	received atomic.Int64
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var ev struct {
		Account int   `json:"account_id"`
		Seq     int64 `json:"seq"`
	}
	body, err := io.ReadAll(req.Body)
	if err != nil || json.Unmarshal(body, &ev) != nil {
		http.Error(w, "bad event", http.StatusBadRequest)
		return
	}
	id, _ := strconv.ParseInt(req.Header.Get("Herald-Job-Id"), 10, 64)
	attempt, _ := strconv.Atoi(req.Header.Get("Herald-Attempt"))
	done := r.rec.Start(id, req.Header.Get("Herald-Key"), ev.Seq, attempt)
	select {
	case <-time.After(r.work):
	case <-req.Context().Done():
		done(history.Failed)
		return
	}
	done(history.Succeeded)
	r.received.Add(1)
	r.lastEnd.Store(time.Now().UnixNano())
}

func eventsConfig(hook string) string {
	return fmt.Sprintf(`
workers: 2000
kinds:
  process-event:
    type: webhook
    max_attempts: 5
    webhook:
      url: %s
      timeout: 30s
topics:
  account-events:
    kind: process-event
    key_field: account_id
`, hook)
}

// postEvents posts events (account per event) to the topic with one
// goroutine per group of accounts, so each account's events are posted, and
// acknowledged, in order. It returns the acknowledgements. sent, if not
// nil, is called with each event's account and the time its request was
// sent, before the request (in each account's order).
func postEvents(ctx context.Context, t *testing.T, s *server, rec *history.Recorder, accounts []int, workers int, sent func(account int, at time.Time)) error {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			seq := map[int]int64{}
			for _, a := range accounts {
				if a%workers != w {
					continue
				}
				body := fmt.Sprintf(`{"account_id": %d, "seq": %d, "type": "renewed"}`, a, seq[a])
				if sent != nil {
					sent(a, time.Now())
				}
				code, resp, err := post(ctx, client, s.url("/v1/events/account-events"), body)
				if err != nil || code != http.StatusCreated {
					errs <- fmt.Errorf("post event: %d %s %w", code, resp, err)
					return
				}
				var ack struct {
					ID int64 `json:"id"`
				}
				if err := json.Unmarshal(resp, &ack); err != nil || ack.ID == 0 {
					errs <- fmt.Errorf("event answer %s: %w", resp, err)
					return
				}
				rec.Ack(history.Ack{ID: ack.ID, Key: strconv.Itoa(a), Seq: seq[a]})
				seq[a]++
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// The seeds 002/003 task end to end: 10,000 events for 1,000 accounts posted
// to /v1/events/{topic} in random account order, delivered to a webhook that
// takes 1 s each. Per-account order, no overlaps, nothing lost, nothing run
// twice; the log line reports the makespan against the busiest account's
// lower bound.
func TestEventsMakespan(t *testing.T) {
	t.Parallel()
	events, accounts, work := 10000, 1000, time.Second
	if testing.Short() {
		events, accounts, work = 1000, 100, 200*time.Millisecond
	}
	rec := history.NewRecorder()
	rcv := &receiver{rec: rec, work: work}
	hook := httptest.NewServer(rcv)
	t.Cleanup(hook.Close)
	s := startServer(t, t.TempDir(), eventsConfig(hook.URL))

	r := rand.New(rand.NewPCG(rand.Uint64(), 3))
	order := make([]int, events)
	perAccount := make([]int, accounts)
	for i := range order {
		order[i] = r.IntN(accounts)
		perAccount[order[i]]++
	}
	busiest := 0
	for _, n := range perAccount {
		busiest = max(busiest, n)
	}
	bound := time.Duration(busiest) * work

	// No delivery of an event can start before its request was sent: on a
	// loaded machine posting alone can take longer than the bound.
	var sentMu sync.Mutex
	sentAt := make([][]time.Time, accounts)
	start := time.Now()
	if err := postEvents(t.Context(), t, s, rec, order, 64, func(a int, at time.Time) {
		sentMu.Lock()
		sentAt[a] = append(sentAt[a], at)
		sentMu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	posted := time.Since(start)
	// arrivalBound is the makespan of an ideal queue given when the
	// events were sent: each account's events one after another, none
	// before it was sent.
	var arrivalBound time.Duration
	for _, times := range sentAt {
		end := start
		for _, at := range times {
			if at.After(end) {
				end = at
			}
			end = end.Add(work)
		}
		arrivalBound = max(arrivalBound, end.Sub(start))
	}
	deadline := time.Now().Add(bound*2 + time.Minute)
	for rcv.received.Load() < int64(events) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events delivered before the deadline", rcv.received.Load(), events)
		}
		time.Sleep(20 * time.Millisecond)
	}
	makespan := time.Unix(0, rcv.lastEnd.Load()).Sub(start)
	rep := rec.Check(history.Options{})
	ratio := makespan.Seconds() / bound.Seconds()
	t.Logf("%d events, %d accounts: posted in %s; bound %s, makespan %s, ratio %.3f; bound given the send times %s, ratio %.3f; %s",
		events, accounts, posted.Round(time.Millisecond), bound, makespan.Round(time.Millisecond), ratio,
		arrivalBound.Round(time.Millisecond), makespan.Seconds()/arrivalBound.Seconds(), rep)
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	if rep.Duplicates != 0 {
		t.Errorf("%d duplicates without any crash", rep.Duplicates)
	}
	// The 1.03 is a performance floor, measured on an idle machine
	// with `HERALD_E2E_STRICT=1 go test -run TestEventsMakespan -v ./e2e`
	// and recorded in docs/benchmarks.md. Under a loaded, race-enabled CI
	// run the default limit only catches gross regressions (sharding or
	// head-of-line blocking: seed 003 took 4x), against the bound given
	// the send times, so that slow posting on an overloaded machine is not
	// counted against delivery.
	judged := bound // the measure
	if os.Getenv("HERALD_E2E_STRICT") != "1" {
		judged = max(bound, arrivalBound)
	}
	if limit, r := makespanLimit(), makespan.Seconds()/judged.Seconds(); !testing.Short() && r > limit {
		t.Errorf("makespan %s is %.3f x the bound %s (limit %.2f)", makespan.Round(time.Millisecond), r, judged.Round(time.Millisecond), limit)
	}
	if err := s.stop(syscall.SIGTERM, 40*time.Second); err != nil {
		t.Errorf("herald serve exited with %v after SIGTERM:\n%s", err, s.logs.String())
	}
}

// SIGTERM under load: the process drains (HTTP 503 for new work), lets
// running deliveries finish, exits 0; a restart on the same data directory
// delivers the rest; the checker finds nothing lost, reordered or run twice.
func TestGracefulShutdownUnderLoad(t *testing.T) {
	t.Parallel()
	rec := history.NewRecorder()
	// 250 ms per event, 20 events per account: 5 s of work per account,
	// so a loaded machine's slow SIGTERM handling cannot let all finish.
	rcv := &receiver{rec: rec, work: 250 * time.Millisecond}
	hook := httptest.NewServer(rcv)
	t.Cleanup(hook.Close)
	dataDir := t.TempDir()
	s := startServer(t, dataDir, eventsConfig(hook.URL))

	accounts := make([]int, 2000)
	for i := range accounts {
		accounts[i] = i % 100 // 20 events per account
	}
	// Posting under a loaded CI machine can take seconds: hold the kind
	// until everything is posted, so the stop lands mid-run.
	control := &http.Client{}
	if code, body, err := post(t.Context(), control, s.url("/v1/kinds/process-event/pause"), ""); err != nil || code != http.StatusOK {
		t.Fatalf("pause: %d %s %v", code, body, err)
	}
	if err := postEvents(t.Context(), t, s, rec, accounts, 16, nil); err != nil {
		t.Fatal(err)
	}
	if code, body, err := post(t.Context(), control, s.url("/v1/kinds/process-event/resume"), ""); err != nil || code != http.StatusOK {
		t.Fatalf("resume: %d %s %v", code, body, err)
	}
	time.Sleep(300 * time.Millisecond) // some delivered, most waiting
	// A request in flight at the signal holds the HTTP drain for seconds;
	// no job may start meanwhile.
	slow := slowEnqueue(t, s.addr, 3*time.Second)
	sigAt := time.Now()
	if err := s.stop(syscall.SIGTERM, 40*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, s.logs.String())
	}
	<-slow
	// A cycle under way at the signal may still start its jobs; allow for
	// that on a loaded machine, not for starts all through the drain.
	const slack = time.Second
	late := 0
	for _, r := range rec.Records() {
		if r.Start.After(sigAt.Add(slack)) {
			late++
		}
	}
	if late > 0 {
		t.Errorf("%d deliveries started more than %s after SIGTERM, while HTTP drained", late, slack)
	}
	before := rcv.received.Load()
	if before == 0 || before == int64(len(accounts)) {
		t.Fatalf("%d of %d delivered at shutdown; the test needs a partial run", before, len(accounts))
	}

	s2 := startServer(t, dataDir, eventsConfig(hook.URL))
	deadline := time.Now().Add(time.Minute)
	for rcv.received.Load() < int64(len(accounts)) {
		if time.Now().After(deadline) {
			t.Fatalf("after restart %d of %d delivered", rcv.received.Load(), len(accounts))
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep := rec.Check(history.Options{})
	t.Logf("delivered %d before SIGTERM, the rest after restart: %s", before, rep)
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	if rep.Duplicates != 0 || rep.Unfinished != 0 {
		t.Errorf("graceful stop left %d duplicates, %d unfinished attempts", rep.Duplicates, rep.Unfinished)
	}
	if err := s2.stop(syscall.SIGTERM, 40*time.Second); err != nil {
		t.Errorf("second server exit: %v", err)
	}
}

// slowEnqueue starts a POST /v1/jobs whose body trickles in over d, and
// returns once the server is reading it; the channel closes when the
// request is over (answered or cut off).
func slowEnqueue(t *testing.T, addr string, d time.Duration) <-chan struct{} {
	t.Helper()
	body := `{"kind":"noop","key":"slow","payload":{}}`
	conn, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("POST /v1/jobs HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		len(body), body[:1])
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the handler is reading the body
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { _ = conn.Close() }() // the outcome does not matter
		rest := body[1:]
		step := d / time.Duration(len(rest))
		for i := range len(rest) {
			time.Sleep(step)
			if _, err := conn.Write([]byte{rest[i]}); err != nil {
				return
			}
		}
		_, _ = io.Copy(io.Discard, conn)
	}()
	return done
}

// makespanLimit is the makespan/bound ratio TestEventsMakespan accepts:
// the 1.03 with HERALD_E2E_STRICT=1, 2 otherwise (fixed sharding, as in seed 003, is 4x).
func makespanLimit() float64 {
	if os.Getenv("HERALD_E2E_STRICT") == "1" {
		return 1.03
	}
	return 2
}
