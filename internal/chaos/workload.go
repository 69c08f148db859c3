package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldmq/herald/internal/history"
)

// Workload keys that the sink treats specially.
const (
	poisonKey = "poison"
	slowKey   = "slow"
)

// workload enqueues jobs over the HTTP API and records what each request
// learned: a 2xx is an ack; an answer that says nothing was stored is a
// definite failure; anything else (a cut connection, a timeout) leaves the
// job indeterminate.
type workload struct {
	nodes  []*process
	client *http.Client
	kind   string

	keys    []string
	keyMu   []sync.Mutex // one request of a key at a time keeps its seqs in ack order
	keySeq  []int64      // guarded by keyMu
	zipf    *rand.Zipf   // guarded by rndMu
	rnd     *rand.Rand   // guarded by rndMu
	rndMu   sync.Mutex
	poison  atomic.Bool  // poison and slow jobs are mixed in while set
	special float64      // share of picks that go to the poison and slow keys
	uid     atomic.Int64 // unique job ids of the history
	sent    atomic.Int64 // requests sent (attempted)
	quota   atomic.Int64 // requests to send before the current run returns
	phase   atomic.Pointer[string]

	mu            sync.Mutex
	acks          []history.Ack
	indeterminate map[int64]bool
	refused       int
	rejected      int
	sentAt        map[int64]time.Time
	phaseOf       map[int64]string
	poisonUIDs    map[int64]bool
	poisonJobs    map[int64]int64 // acked poison uid -> herald job id
	rejectCodes   map[string]int
	// ambiguous holds the uids answered 503 commit_unknown.
	ambiguous map[int64]bool
}

func newWorkload(nodes []*process, keys int, zipfS, zipfV float64, seed uint64, kind string) *workload {
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) //nolint:gosec // workload shape, not security
	w := &workload{
		nodes: nodes, kind: kind,
		client: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		}},
		keys: make([]string, keys+2), keyMu: make([]sync.Mutex, keys+2), keySeq: make([]int64, keys+2),
		rnd: rnd, zipf: rand.NewZipf(rnd, zipfS, zipfV, uint64(keys-1)), //nolint:gosec // keys ≥ 2 (validated),
		special:       0.01,
		indeterminate: map[int64]bool{}, sentAt: map[int64]time.Time{}, phaseOf: map[int64]string{},
		poisonUIDs: map[int64]bool{}, poisonJobs: map[int64]int64{}, rejectCodes: map[string]int{}, ambiguous: map[int64]bool{},
	}
	for i := range keys {
		w.keys[i] = fmt.Sprintf("k%d", i)
	}
	w.keys[keys], w.keys[keys+1] = poisonKey, slowKey
	empty := ""
	w.phase.Store(&empty)
	return w
}

// pick returns the index of the next job's key.
func (w *workload) pick() int {
	w.rndMu.Lock()
	defer w.rndMu.Unlock()
	// The slow key is always in the mix, the poison key only while set:
	// the latency phases then differ by the poison key alone.
	switch r := w.rnd.Float64(); {
	case r < w.special/2:
		return len(w.keys) - 1
	case r < w.special && w.poison.Load():
		return len(w.keys) - 2
	}
	return int(w.zipf.Uint64()) //nolint:gosec // below len(keys)
}

// run sends n requests with conc concurrent clients, then returns. With
// rate > 0 the requests start at that many per second (an open loop, so
// that latency is measured below saturation); otherwise as fast as the
// clients go.
func (w *workload) run(ctx context.Context, n int64, conc int, rate float64, phase string) {
	w.phase.Store(&phase)
	w.quota.Store(w.sent.Load() + n)
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				if tick != nil {
					select {
					case <-tick:
					case <-ctx.Done():
						return
					}
				}
				if w.sent.Add(1) > w.quota.Load() {
					w.sent.Add(-1)
					return
				}
				if !w.one(ctx, w.pick()) {
					// The node is down or refusing: do not spin.
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

// one enqueues one job of key k; it reports whether the job was acked.
func (w *workload) one(ctx context.Context, k int) bool {
	w.keyMu[k].Lock()
	defer w.keyMu[k].Unlock()
	w.keySeq[k]++
	key, seq, uid := w.keys[k], w.keySeq[k], w.uid.Add(1)
	body := map[string]any{"kind": w.kind, "key": key, "payload": Payload{UID: uid, Key: key, Seq: seq}}
	if key == poisonKey {
		body["max_attempts"] = poisonMaxAttempts
	}
	b, _ := json.Marshal(body) // plain values: cannot fail
	node := w.nodes[uid%int64(len(w.nodes))]
	sent := time.Now()
	w.mu.Lock()
	w.sentAt[uid] = sent
	w.phaseOf[uid] = *w.phase.Load()
	if key == poisonKey {
		w.poisonUIDs[uid] = true
	}
	w.mu.Unlock()

	status, code, jobID, err := post(ctx, w.client, "http://"+node.addr+"/v1/jobs", b)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err == nil && status/100 == 2:
		w.acks = append(w.acks, history.Ack{ID: uid, Key: key, Seq: seq})
		if key == poisonKey {
			w.poisonJobs[uid] = jobID
		}
		return true
	case err != nil && isDialError(err):
		w.refused++ // never reached the server
	case err == nil && definiteRejection(status, code):
		w.rejected++
		w.rejectCodes[fmt.Sprintf("%d %s", status, code)]++
	default:
		w.indeterminate[uid] = true
		if code == "commit_unknown" {
			w.ambiguous[uid] = true
		}
	}
	return false
}

// definiteRejection reports whether an answer means nothing was stored.
// 503 commit_unknown is the store's own "maybe" (the connection broke
// during COMMIT), so it stays indeterminate; store_unavailable promises
// the write failed, and the checker holds the server to it.
func definiteRejection(status int, code string) bool {
	if status/100 == 4 {
		return true
	}
	if status == http.StatusServiceUnavailable {
		switch code {
		case "draining", "stopped", "store_unavailable": // refused before any write, or the write failed
			return true
		}
	}
	return false
}

func isDialError(err error) bool {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		return oe.Op == "dial"
	}
	return false
}

// post sends body and returns the status, the error code of an error
// answer and the job id of a successful one.
func post(ctx context.Context, c *http.Client, url string, body []byte) (status int, code string, id int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, "", 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", 0, err
	}
	defer resp.Body.Close() //nolint:errcheck // read below
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", 0, err // the answer was cut: indeterminate
	}
	var e struct {
		ID    int64 `json:"id"`
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e.Error.Code, e.ID, nil
}

func decodeJSON(r io.Reader, v any) error {
	return json.NewDecoder(io.LimitReader(r, 1<<20)).Decode(v)
}
